//! Q8_0 weights (GGUF), computed as llama.cpp's CPU backend does (docs/port-contract.md): the
//! matmul's input is quantized to Q8_0 too, once per group of matmuls that share it, each block's
//! dot product is an exact int32 sum of int8 products, and only its scaling and the sum over
//! blocks are fp32.

const std = @import("std");
const builtin = @import("builtin");
const model = @import("model.zig");
const Q8Block = model.Q8Block;
const testing = std.testing;

pub const QB = model.Q8_BLOCK;
const F32xB = @Vector(QB, f32);
const I8xB = @Vector(QB, i8);
const I32xB = @Vector(QB, i32);

/// A matmul's input: fp32, and quantized when a weight of its group is Q8_0 (`qx` and `dx`
/// empty otherwise).
pub const Input = struct {
    x: []const f32,
    qx: []const i8 = &.{},
    dx: []const f32 = &.{},
};

/// llama.cpp's SIMD quantize_row_q8_0 (which differs from the reference quantizer the weights
/// went through): amax = max |x| per block, scale fp16(amax / 127) as the dot product uses it,
/// q = x * (127 / amax) rounded to nearest, ties to even.
pub fn quantizeActivation(qx: []i8, dx: []f32, x: []const f32) void {
    for (dx, 0..) |*d, b| {
        const blk = quantizeBlock(x[b * QB ..][0..QB].*);
        d.* = blk.d;
        qx[b * QB ..][0..QB].* = blk.q;
    }
}

/// One block of quantizeActivation: its 32 quants and the fp16-rounded scale as fp32.
pub inline fn quantizeBlock(v: F32xB) struct { q: I8xB, d: f32 } {
    const amax = @reduce(.Max, @abs(v));
    const id: f32 = if (amax != 0) 127.0 / amax else 0;
    return .{ .q = roundToI8(v * @as(F32xB, @splat(id))), .d = @as(f16, @floatCast(amax / 127.0)) };
}

/// Rounds to nearest, ties to even, as the vector instructions do (Zig's @round takes ties away
/// from zero): past 1.5 * 2^23 a float has no fraction bits, so the addition itself rounds in
/// the FPU's default mode. The clamp only matters for a non-finite activation (a broken
/// model), which then gives some int8 instead of undefined behaviour.
fn roundToI8(v: F32xB) I8xB {
    const magic: F32xB = @splat(0x1.8p23);
    const r = (v + magic) - magic;
    return @intFromFloat(@min(@max(r, @as(F32xB, @splat(-127))), @as(F32xB, @splat(127))));
}

/// VNNI's byte dot product (vpdpbusd) multiplies unsigned by signed bytes.
const has_vnni = switch (builtin.cpu.arch) {
    .x86_64, .x86 => builtin.cpu.has(.x86, .avxvnni) or builtin.cpu.has(.x86, .avx512vnni),
    else => false,
};

/// The exact sum of a block's 32 products w_i * x_i, |x_i| <= 127. Written as one widening
/// multiply and sum, it compiles to vpmovsxbw + vpmaddwd on AVX2 and AVX-512 without VNNI, and
/// to sdot on arm64 with the dotprod feature (smull + saddl without it).
inline fn blockDot(w: I8xB, x: I8xB) i32 {
    if (has_vnni) {
        // |w| * (x with w's sign) is the same product, unsigned by signed, which LLVM turns into
        // vpdpbusd. |w| rather than |x|: w = -128 may occur in a file, x = -128 never does.
        const zero: I8xB = @splat(0);
        const sx = @select(i8, w < zero, zero -% x, x);
        return @reduce(.Add, @as(I32xB, @abs(w)) * @as(I32xB, sx));
    }
    return @reduce(.Add, @as(I32xB, w) * @as(I32xB, x));
}

/// x86 with AVX2: a block's products as eight int32 partial sums, each of four adjacent
/// products, straight from the byte instructions (LLVM's own intrinsics; written as vector
/// arithmetic, LLVM widened the bytes to int32 instead). |w| times x with w's sign is the same
/// product, unsigned by signed, which is what vpdpbusd and vpmaddubsw take; |w| rather than |x|
/// because w = -128 may occur in a file and x = -128 never does (quantizeActivation). A pair of
/// products is at most 2 * 128 * 127 < 2^15, so vpmaddubsw cannot saturate.
/// Only where LLVM compiles (the release builds): Zig's own x86 backend, which debug builds use,
/// has no LLVM intrinsics and takes the portable path.
const has_partials = switch (builtin.cpu.arch) {
    .x86_64, .x86 => builtin.cpu.has(.x86, .avx2) and builtin.zig_backend == .stage2_llvm,
    else => false,
};
const I32x8 = @Vector(8, i32);
extern fn @"llvm.x86.avx512.vpdpbusd.256"(I32x8, I32x8, I32x8) I32x8;
extern fn @"llvm.x86.avx2.pmadd.ub.sw"(@Vector(32, u8), @Vector(32, i8)) @Vector(16, i16);
extern fn @"llvm.x86.avx2.pmadd.wd"(@Vector(16, i16), @Vector(16, i16)) I32x8;

inline fn blockPartials(w: I8xB, x: I8xB) I32x8 {
    const zero: I8xB = @splat(0);
    const sx = @select(i8, w < zero, zero -% x, x);
    const aw: @Vector(32, u8) = @abs(w);
    if (has_vnni) return @"llvm.x86.avx512.vpdpbusd.256"(@splat(0), @bitCast(aw), @bitCast(sx));
    return @"llvm.x86.avx2.pmadd.wd"(@"llvm.x86.avx2.pmadd.ub.sw"(aw, sx), @splat(1));
}

/// vphaddd: in each 128-bit half, a's two pairwise lane sums, then b's.
inline fn hadd(a: I32x8, b: I32x8) I32x8 {
    return @shuffle(i32, a, b, [8]i32{ 0, 2, -1, -3, 4, 6, -5, -7 }) +
        @shuffle(i32, a, b, [8]i32{ 1, 3, -2, -4, 5, 7, -6, -8 });
}

/// Four blocks' partial sums -> each block's sum over one 128-bit half of its lanes: blocks 0-3
/// in lanes 0-3 (the low halves) and again in lanes 4-7 (the high halves).
inline fn halfSums4(v0: I32x8, v1: I32x8, v2: I32x8, v3: I32x8) I32x8 {
    return hadd(hadd(v0, v1), hadd(v2, v3));
}

/// Four blocks' partial sums -> their four isums, in order.
inline fn isums4(v0: I32x8, v1: I32x8, v2: I32x8, v3: I32x8) @Vector(4, i32) {
    const s = halfSums4(v0, v1, v2, v3);
    return @shuffle(i32, s, undefined, [4]i32{ 0, 1, 2, 3 }) + @shuffle(i32, s, undefined, [4]i32{ 4, 5, 6, 7 });
}

/// Eight blocks' partial sums -> their eight isums, in order.
inline fn isums8(v: [8]I32x8) I32x8 {
    const lo = halfSums4(v[0], v[1], v[2], v[3]);
    const hi = halfSums4(v[4], v[5], v[6], v[7]);
    return @shuffle(i32, lo, hi, [8]i32{ 0, 1, 2, 3, -1, -2, -3, -4 }) +
        @shuffle(i32, lo, hi, [8]i32{ 4, 5, 6, 7, -5, -6, -7, -8 });
}

/// One row, eight blocks at a time, as the C port's q8_dot_row: the eight blocks' isums side by
/// side (isums8), their scales converted together, scaled and summed lane-wise (the contract
/// leaves the order of the sum over blocks free); the blocks past the last eight one by one.
fn rowDot8(row: []const Q8Block, in: Input) f32 {
    const nb = row.len;
    var acc: @Vector(8, f32) = @splat(0);
    var b: usize = 0;
    while (b + 8 <= nb) : (b += 8) {
        var v: [8]I32x8 = undefined;
        var h: @Vector(8, u16) = undefined;
        inline for (0..8) |k| {
            v[k] = blockPartials(row[b + k].qs, in.qx[(b + k) * QB ..][0..QB].*);
            h[k] = std.mem.readInt(u16, &row[b + k].d, .little);
        }
        const isum: @Vector(8, f32) = @floatFromInt(isums8(v));
        const dw: @Vector(8, f32) = @floatCast(@as(@Vector(8, f16), @bitCast(h)));
        const dx: @Vector(8, f32) = in.dx[b..][0..8].*;
        acc += isum * (dw * dx);
    }
    var sum = @reduce(.Add, acc);
    while (b < nb) : (b += 1) {
        const isum = blockDot(row[b].qs, in.qx[b * QB ..][0..QB].*);
        sum += @as(f32, @floatFromInt(isum)) * (row[b].scale() * in.dx[b]);
    }
    return sum;
}

/// As matmulRowsF32 for a Q8_0 W, on an input quantized by quantizeActivation: out[r] = sum over
/// blocks b of float(isum) * (fp32(d_w) * d_x). On x86, rows of 16 blocks or more go one at a
/// time, eight blocks at a time (rowDot8), each row prefetched four rows ahead. Otherwise (short
/// rows, where rowDot8's leftover blocks cost too much: the 15M shape's 9, and every arm64
/// build) four rows at a time, one lane of the fp32 accumulator each: each input block loaded
/// serves four rows, the four blocks' int32 sums are reduced together (on x86 from their partial
/// sums: isums4), their four scales converted together, and a row's total needs no horizontal
/// add at the end. Both paths were measured build against build (the port's README).
pub fn matmulRowsQ8(out: []f32, w: []const Q8Block, in: Input, r0: usize, r1: usize) void {
    const nb = in.dx.len; // blocks per row
    var i = r0;
    if (has_partials and nb >= 16) {
        while (i < r1) : (i += 1) {
            if (prefetch and i + 4 < r1) prefetchBytes(std.mem.sliceAsBytes(w[(i + 4) * nb ..][0..nb]));
            out[i] = rowDot8(w[i * nb ..][0..nb], in);
        }
        return;
    }
    while (i + 4 <= r1) : (i += 4) {
        if (prefetch and i + 8 <= r1) prefetchBytes(std.mem.sliceAsBytes(w[(i + 4) * nb ..][0 .. 4 * nb]));
        const rows = w[i * nb ..][0 .. 4 * nb];
        var acc: @Vector(4, f32) = @splat(0);
        for (in.dx, 0..) |dx, b| {
            const xq: I8xB = in.qx[b * QB ..][0..QB].*;
            var isum: @Vector(4, i32) = undefined;
            var h: @Vector(4, u16) = undefined;
            if (has_partials) {
                isum = isums4(blockPartials(rows[b].qs, xq), blockPartials(rows[nb + b].qs, xq),
                    blockPartials(rows[2 * nb + b].qs, xq), blockPartials(rows[3 * nb + b].qs, xq));
            } else {
                inline for (0..4) |k| isum[k] = blockDot(rows[k * nb + b].qs, xq);
            }
            inline for (0..4) |k| h[k] = std.mem.readInt(u16, &rows[k * nb + b].d, .little);
            const dw: @Vector(4, f32) = @floatCast(@as(@Vector(4, f16), @bitCast(h)));
            acc += @as(@Vector(4, f32), @floatFromInt(isum)) * (dw * @as(@Vector(4, f32), @splat(dx)));
        }
        out[i..][0..4].* = acc;
    }
    while (i < r1) : (i += 1) {
        var acc: f32 = 0;
        for (w[i * nb ..][0..nb], in.dx, 0..) |*blk, dx, b| {
            const isum = blockDot(blk.qs, in.qx[b * QB ..][0..QB].*);
            acc += @as(f32, @floatFromInt(isum)) * (blk.scale() * dx);
        }
        out[i] = acc;
    }
}

/// Whether matmulRowsQ8 asks for the next four rows, every cache line, while it computes four:
/// each row is a sequential stream of 34-byte blocks read once, and the hardware prefetcher
/// alone left the 110M shape far below the memory's bandwidth (measured in the port's README).
/// POLYLLAMA_Q8_PREFETCH=0 (read by main) turns it off, for before/after runs.
pub var prefetch = true;

fn prefetchBytes(bytes: []const u8) void {
    var o: usize = 0;
    while (o < bytes.len) : (o += 64) @prefetch(bytes.ptr + o, .{ .rw = .read, .locality = 3, .cache = .data });
}

/// A Q8_0 row as fp32: d * q, exact.
pub fn dequantizeRow(out: []f32, blocks: []const Q8Block) void {
    for (blocks, 0..) |*blk, b| {
        const q: I8xB = blk.qs;
        out[b * QB ..][0..QB].* = @as(F32xB, @floatFromInt(q)) * @as(F32xB, @splat(blk.scale()));
    }
}

/// Scalar Q8_0 matmul, the contract's formula block by block in row order: the SIMD kernel sums
/// each row's blocks in the same order, so it must match bit for bit.
pub fn matmulQ8Scalar(out: []f32, w: []const Q8Block, qx: []const i8, dx: []const f32) void {
    const nb = dx.len;
    for (out, 0..) |*o, r| {
        var acc: f32 = 0;
        for (0..nb) |b| {
            const blk = w[r * nb + b];
            var isum: i32 = 0;
            for (blk.qs, qx[b * QB ..][0..QB]) |q, xq| isum += @as(i32, q) * xq;
            const d: f32 = @as(f16, @bitCast(std.mem.readInt(u16, &blk.d, .little)));
            acc += @as(f32, @floatFromInt(isum)) * (d * dx[b]);
        }
        o.* = acc;
    }
}

test "Q8_0 activation quantization: fp16 scale, ties to even, all-zero blocks" {
    var x: [3 * QB]f32 = @splat(0);
    // block 0: amax 127 makes the multiplier exactly 1, so x itself is the value rounded
    const ties = [_]f32{ 127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51, 126.5, -126.5, 0.49999997 };
    const want = [_]i8{ 127, 0, 2, 2, 0, -2, -2, 3, -4, 126, -126, 0 };
    @memcpy(x[0..ties.len], &ties);
    // block 1 stays all zero; block 2: amax / 127 is not an fp16 value, and rounds to one
    for (x[2 * QB ..], 0..) |*v, i| v.* = 0.001 * @as(f32, @floatFromInt(@as(i32, @intCast(i)) - 13));
    var qx: [3 * QB]i8 = undefined;
    var dx: [3]f32 = undefined;
    quantizeActivation(&qx, &dx, &x);
    try testing.expectEqualSlices(i8, &want, qx[0..want.len]);
    try testing.expectEqual(@as(f32, 1), dx[0]);
    try testing.expectEqualSlices(i8, &(@as([QB]i8, @splat(0))), qx[QB .. 2 * QB]);
    try testing.expectEqual(@as(f32, 0), dx[1]);
    const amax: f32 = 0.001 * 18;
    try testing.expectEqual(@as(f32, @as(f16, @floatCast(amax / 127.0))), dx[2]);
    for (qx[2 * QB ..], x[2 * QB ..]) |q, v| {
        const exact = v * (127.0 / amax);
        try testing.expect(@abs(@as(f32, @floatFromInt(q)) - exact) <= 0.5);
    }
    // a broken model's non-finite activations quantize to something, without a panic
    x[0] = std.math.nan(f32);
    x[QB] = std.math.inf(f32);
    quantizeActivation(&qx, &dx, &x);
}

test "Q8_0 matmul kernel, rows of 16 blocks or more: exact where every order is, close elsewhere" {
    var prng: std.Random.DefaultPrng = .init(17);
    const rand = prng.random();
    const rows = 6;
    const nb = 19; // two groups of eight (rowDot8 on x86) and three blocks one by one
    var w: [rows * nb]Q8Block = undefined;
    var x: [nb * QB]f32 = undefined;
    var qx: [nb * QB]i8 = undefined;
    var dx: [nb]f32 = undefined;
    var want: [rows]f32 = undefined;
    var got: [rows]f32 = undefined;
    for (0..2) |round| {
        // round 0: scales 1 and 0 and an activation of integers whose blocks reach 127, so that
        // dx = 1, qx = x and every term is an integer: the sum is exact in any order, and the
        // kernel must give the scalar formula's bits. Round 1: random scales, within rounding.
        for (&w, 0..) |*blk, i| {
            for (&blk.qs) |*q| q.* = rand.int(i8);
            const d: f16 = if (round == 0) (if (i % 7 == 3) 0 else 1) else @floatCast(rand.float(f32) * 0.02);
            std.mem.writeInt(u16, &blk.d, @bitCast(d), .little);
            if (i % 9 == 4) blk.qs = @splat(-128);
        }
        for (&x, 0..) |*v, i| {
            v.* = if (round == 0) @floatFromInt(rand.intRangeAtMost(i8, -127, 127)) else rand.floatNorm(f32);
            if (round == 0 and i % QB == 0) v.* = 127;
        }
        quantizeActivation(&qx, &dx, &x);
        matmulQ8Scalar(&want, &w, &qx, &dx);
        matmulRowsQ8(&got, &w, .{ .x = &x, .qx = &qx, .dx = &dx }, 0, rows);
        if (round == 0) {
            for (dx) |d| try testing.expectEqual(@as(f32, 1), d);
            try testing.expectEqualSlices(f32, &want, &got);
        } else {
            for (want, got) |a, b| try testing.expectApproxEqAbs(a, b, 1e-5 * (1 + @abs(a)));
        }
    }
}

test "Q8_0 matmul kernel: bit for bit the scalar formula, ragged rows, -128 and zero blocks" {
    var prng: std.Random.DefaultPrng = .init(16);
    const rand = prng.random();
    const rows = 11; // two 4-row passes and three single rows
    const nb = 5;
    var w: [rows * nb]Q8Block = undefined;
    for (&w, 0..) |*blk, i| {
        for (&blk.qs) |*q| q.* = rand.int(i8); // -128 included
        const d: f16 = @floatCast(rand.float(f32) * 0.02);
        std.mem.writeInt(u16, &blk.d, @bitCast(d), .little);
        if (i % 7 == 3) blk.* = .{ .d = .{ 0, 0 }, .qs = @splat(0) }; // amax = 0 weight blocks
        if (i % 9 == 4) blk.qs = @splat(-128);
    }
    var x: [nb * QB]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = if (i / QB == 2) 0 else rand.floatNorm(f32); // block 2 all zero
    var qx: [nb * QB]i8 = undefined;
    var dx: [nb]f32 = undefined;
    quantizeActivation(&qx, &dx, &x);
    try testing.expectEqual(@as(f32, 0), dx[2]);
    var want: [rows]f32 = undefined;
    matmulQ8Scalar(&want, &w, &qx, &dx);
    var got: [rows]f32 = undefined;
    const in: Input = .{ .x = &x, .qx = &qx, .dx = &dx };
    matmulRowsQ8(&got, &w, in, 0, rows);
    try testing.expectEqualSlices(f32, &want, &got);
    // and starting off a multiple of 4, as a chunk of rows may
    @memset(&got, 0);
    matmulRowsQ8(&got, &w, in, 1, rows);
    try testing.expectEqualSlices(f32, want[1..], got[1..]);
    // an unaligned start, as blocks in a file have: the same bytes one further
    var bytes: [rows * nb * 34 + 1]u8 = undefined;
    @memcpy(bytes[1..], std.mem.sliceAsBytes(&w));
    matmulRowsQ8(&got, model.q8BlocksAt(&bytes, 1, rows * nb), in, 0, rows);
    try testing.expectEqualSlices(f32, &want, &got);
    var row: [nb * QB]f32 = undefined;
    dequantizeRow(&row, w[nb..][0..nb]);
    for (row, 0..) |v, i| try testing.expectEqual(w[nb + i / QB].scale() * @as(f32, @floatFromInt(w[nb + i / QB].qs[i % QB])), v);
}
