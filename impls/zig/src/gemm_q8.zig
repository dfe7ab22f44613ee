//! The batched prefill's products with Q8_0 weights: out(T, n) = X(T, d) @ W(n, d)^T, each
//! activation row quantized as q8.zig's quantizeActivation does (blocks of 32 along the row,
//! ties to even, fp16-rounded scale), each output the contract's sum over blocks of
//! float(isum) * (fp32(dw) * dx), isum exact in int32.
//!
//! With VNNI (AVX-512 VNNI: 16 lanes; AVX-VNNI: 8) the activations are packed into panels of L
//! rows: for each block and each group of 4 bytes of it, the L rows' 4 bytes side by side, so
//! that one `vpdpbusd` against the weight row's same 4 bytes broadcast adds 4 products to each
//! of the L rows' block sums, and a tile of TILE_R weight rows x TILE_G panels needs no
//! horizontal sum at all. vpdpbusd multiplies unsigned by signed bytes: the panels hold x + 128
//! (1..255, as x is never -128), and each block sum starts at -128 * sum(w) of the weight block,
//! so that it ends at the exact sum of w * x. Per block, each lane's isum is then scaled and
//! added to the tile's fp32 accumulators, as the contract's formula says.
//!
//! Without VNNI (AVX2, arm64, anything else) each row takes the one-position kernel
//! (q8.matmulRowsQ8), with the chunk's weight rows cut into blocks that stay in L2 while every
//! activation row passes over them.

const std = @import("std");
const builtin = @import("builtin");
const model = @import("model.zig");
const q8 = @import("q8.zig");
const Q8Block = model.Q8Block;
const QB = q8.QB;
const testing = std.testing;

/// The byte intrinsics exist only where LLVM compiles (release builds); Zig's own x86 backend,
/// which debug builds use, takes the fallback.
const llvm = builtin.zig_backend == .stage2_llvm;
const vnni512 = switch (builtin.cpu.arch) {
    .x86_64, .x86 => llvm and builtin.cpu.has(.x86, .avx512vnni) and builtin.cpu.has(.x86, .avx512bw),
    else => false,
};
const vnni256 = switch (builtin.cpu.arch) {
    .x86_64, .x86 => llvm and !vnni512 and builtin.cpu.has(.x86, .avxvnni),
    else => false,
};
pub const has_vnni = vnni512 or vnni256;

/// Activation rows per panel: int32 lanes of a vector register.
pub const L = if (vnni512) 16 else 8;
const I32xL = @Vector(L, i32);
const F32xL = @Vector(L, f32);
extern fn @"llvm.x86.avx512.vpdpbusd.512"(@Vector(16, i32), @Vector(16, i32), @Vector(16, i32)) @Vector(16, i32);
extern fn @"llvm.x86.avx512.vpdpbusd.256"(@Vector(8, i32), @Vector(8, i32), @Vector(8, i32)) @Vector(8, i32);

inline fn dpbusd(acc: I32xL, u: I32xL, s: I32xL) I32xL {
    return if (vnni512) @"llvm.x86.avx512.vpdpbusd.512"(acc, u, s) else @"llvm.x86.avx512.vpdpbusd.256"(acc, u, s);
}

/// Weight rows x panels of the VNNI tile: TILE_R * TILE_G int32 block sums and as many fp32
/// accumulators, plus TILE_G panel vectors and a broadcast, within 32 registers (16 with
/// AVX-VNNI, hence one panel there).
pub const TILE_R = 4;
pub const TILE_G = if (vnni512) 2 else 1;

/// Bytes of packed activations a token block may take (see gemm.zig).
const BLOCK_BYTES = 768 * 1024;
/// Without VNNI: bytes of weight rows a chunk takes at a time, to stay in L2 across the rows.
const WEIGHT_BLOCK_BYTES = 256 * 1024;

/// Rows of quantized activations to allocate for `rows` rows (whole panels with VNNI).
pub fn packedRows(rows: usize) usize {
    return if (has_vnni) (rows + L - 1) / L * L else rows;
}

/// The quantized rows of a product's input: with VNNI and more than one row in panels,
/// otherwise row after row (qx: rows x d, dx: rows x d / 32).
pub const Packed = struct {
    qx: []const i8,
    dx: []const f32,
    rows: usize,
    d: usize,
};

/// Quantizes rows x[t * d ..][0..d] (t < rows), each block as quantizeActivation does.
pub fn quantizeRows(qx: []i8, dx: []f32, x: []const f32, rows: usize, d: usize) Packed {
    quantizeGroups(qx, dx, x, rows, d, 0, groups(rows));
    return packedOf(qx, dx, rows, d);
}

fn panelLayout(rows: usize) bool {
    return has_vnni and rows > 1;
}

/// Units quantizeGroups splits the work into: panels, or rows where there are none.
pub fn groups(rows: usize) usize {
    return if (panelLayout(rows)) (rows + L - 1) / L else rows;
}

/// What quantizeGroups over all groups leaves in qx and dx.
pub fn packedOf(qx: []const i8, dx: []const f32, rows: usize, d: usize) Packed {
    const n = if (panelLayout(rows)) groups(rows) * L else rows;
    return .{ .qx = qx[0 .. n * d], .dx = dx[0 .. n * (d / QB)], .rows = rows, .d = d };
}

/// quantizeRows for groups [g0, g1) only, so that threads can share the quantization.
pub fn quantizeGroups(qx: []i8, dx: []f32, x: []const f32, rows: usize, d: usize, g0: usize, g1: usize) void {
    const nb = d / QB;
    if (!panelLayout(rows)) {
        for (g0..g1) |t| q8.quantizeActivation(qx[t * d ..][0..d], dx[t * nb ..][0..nb], x[t * d ..][0..d]);
        return;
    }
    // panel g, block b: 8 groups of 4 bytes, each the L rows' bytes side by side (L * 32
    // bytes), biased by 128; the block's scales: L floats
    const u: []u8 = @ptrCast(qx);
    for (g0 * L..g1 * L) |t| {
        const g = t / L;
        const lane = t % L;
        for (0..nb) |b| {
            const base = (g * nb + b) * L;
            var bytes: [QB]u8 = @splat(128);
            var scale: f32 = 0;
            if (t < rows) {
                const blk = q8.quantizeBlock(x[t * d + b * QB ..][0..QB].*);
                bytes = @as(@Vector(QB, u8), @bitCast(blk.q)) +% @as(@Vector(QB, u8), @splat(128));
                scale = blk.d;
            }
            inline for (0..QB / 4) |k4| u[(base * 8 + k4 * L + lane) * 4 ..][0..4].* = bytes[k4 * 4 ..][0..4].*;
            dx[base + lane] = scale;
        }
    }
}

/// out[t * ldo + r] for every activation row t and weight rows r in [r0, r1). `wsum` is
/// scratch for TILE_R * d / 32 int32 (the weight blocks' sums), one per concurrent caller.
pub fn gemmRowsQ8(out: []f32, ldo: usize, w: []const Q8Block, in: Packed, r0: usize, r1: usize, wsum: []i32) void {
    const d = in.d;
    const nb = d / QB;
    // one row (-b 1, the classifier's last row) would fill one lane of 16: the one-position
    // kernel streams the weights at memory speed instead
    if (!has_vnni or in.rows == 1) {
        const step = @max(4, WEIGHT_BLOCK_BYTES / (nb * @sizeOf(Q8Block)) / 4 * 4);
        var rb = r0;
        while (rb < r1) : (rb += step) {
            const re = @min(r1, rb + step);
            for (0..in.rows) |t| {
                q8.matmulRowsQ8(out[t * ldo ..], w, .{ .x = &.{}, .qx = in.qx[t * d ..][0..d], .dx = in.dx[t * nb ..][0..nb] }, rb, re);
            }
        }
        return;
    }
    const n_panels = (in.rows + L - 1) / L;
    const block = @max(TILE_G, (BLOCK_BYTES / (d * L)) / TILE_G * TILE_G);
    var g0: usize = 0;
    while (g0 < n_panels) : (g0 += block) {
        const g1 = @min(n_panels, g0 + block);
        var r = r0;
        while (r + TILE_R <= r1) : (r += TILE_R) panelsRows(TILE_R, out, ldo, w, in, r, g0, g1, wsum);
        while (r < r1) : (r += 1) panelsRows(1, out, ldo, w, in, r, g0, g1, wsum);
    }
}

/// Weight rows [r, r + R) against panels [g0, g1): the rows' block sums once, then TILE_G
/// panels at a time.
inline fn panelsRows(comptime R: usize, out: []f32, ldo: usize, w: []const Q8Block, in: Packed, r: usize, g0: usize, g1: usize, wsum: []i32) void {
    const nb = in.d / QB;
    for (0..R) |i| {
        for (w[(r + i) * nb ..][0..nb], wsum[i * nb ..][0..nb]) |*blk, *s| {
            const q: @Vector(QB, i8) = blk.qs;
            s.* = -128 * @reduce(.Add, @as(@Vector(QB, i32), q));
        }
    }
    var g = g0;
    while (g + TILE_G <= g1) : (g += TILE_G) tile(R, TILE_G, out, ldo, w, in, r, g, wsum);
    switch (g1 - g) {
        inline 1...TILE_G - 1 => |left| tile(R, left, out, ldo, w, in, r, g, wsum),
        else => {},
    }
}

fn tile(comptime R: usize, comptime G: usize, out: []f32, ldo: usize, w: []const Q8Block, in: Packed, r: usize, g: usize, wsum: []const i32) void {
    const nb = in.d / QB;
    var acc: [R][G]F32xL = @splat(@splat(@splat(0)));
    const u: [*]const u8 = @ptrCast(in.qx.ptr);
    // the weight blocks as bytes: 34 a block, the fp16 scale first (indexing the block structs
    // by value made LLVM copy each one through the stack)
    const wb0: [*]const u8 = @ptrCast(w.ptr);
    const BS = @sizeOf(Q8Block);
    for (0..nb) |b| {
        var isum: [R][G]I32xL = undefined;
        inline for (0..R) |i| {
            const s0: I32xL = @splat(wsum[i * nb + b]);
            inline for (0..G) |j| isum[i][j] = s0;
        }
        inline for (0..QB / 4) |k4| {
            var xv: [G]I32xL = undefined;
            inline for (0..G) |j| {
                // loaded as a byte vector first: a byte array bitcast straight to int32 lanes
                // was assembled through general registers
                const bytes: @Vector(L * 4, u8) = u[(((g + j) * nb + b) * 8 + k4) * L * 4 ..][0 .. L * 4].*;
                xv[j] = @bitCast(bytes);
            }
            inline for (0..R) |i| {
                const wb: I32xL = @splat(std.mem.readInt(i32, wb0[((r + i) * nb + b) * BS + 2 + k4 * 4 ..][0..4], .little));
                inline for (0..G) |j| isum[i][j] = dpbusd(isum[i][j], xv[j], wb);
            }
        }
        inline for (0..G) |j| {
            const dx: F32xL = in.dx[((g + j) * nb + b) * L ..][0..L].*;
            inline for (0..R) |i| {
                const h = std.mem.readInt(u16, wb0[((r + i) * nb + b) * BS ..][0..2], .little);
                const dw: F32xL = @splat(@as(f32, @as(f16, @bitCast(h))));
                acc[i][j] += @as(F32xL, @floatFromInt(isum[i][j])) * (dw * dx);
            }
        }
    }
    inline for (0..G) |j| {
        const t0 = (g + j) * L;
        const live = @min(L, in.rows - @min(in.rows, t0));
        inline for (0..R) |i| {
            const a: [L]f32 = acc[i][j];
            for (0..live) |lane| out[(t0 + lane) * ldo + r + i] = a[lane];
        }
    }
}

test "batched Q8_0 kernel: the scalar formula row by row, odd T and n" {
    const gpa = testing.allocator;
    var prng: std.Random.DefaultPrng = .init(33);
    const rand = prng.random();
    for ([_]usize{ 64, 96, 256 }) |d| {
        const nb = d / QB;
        for ([_]usize{ 1, 7, 33 }) |rows| {
            for ([_]usize{ 1, 3, TILE_R + 5, 2 * TILE_R + 3 }) |n| {
                for (0..2) |round| {
                    // round 0: unit scales and integer activations reaching 127 in each block,
                    // so that every term is an integer and any summation order gives the same
                    // bits; round 1: random scales, equal within float32 rounding
                    const w = try gpa.alloc(Q8Block, n * nb);
                    defer gpa.free(w);
                    for (w, 0..) |*blk, i| {
                        for (&blk.qs) |*q| q.* = rand.int(i8);
                        const s: f16 = if (round == 0) (if (i % 7 == 3) 0 else 1) else @floatCast(rand.float(f32) * 0.02);
                        std.mem.writeInt(u16, &blk.d, @bitCast(s), .little);
                        if (i % 9 == 4) blk.qs = @splat(-128);
                    }
                    const x = try gpa.alloc(f32, rows * d);
                    defer gpa.free(x);
                    for (x, 0..) |*v, i| {
                        v.* = if (round == 0) @floatFromInt(rand.intRangeAtMost(i8, -127, 127)) else rand.floatNorm(f32);
                        if (round == 0 and i % QB == 0) v.* = 127;
                        if (round == 1 and (i / QB) % 5 == 2) v.* = 0; // all-zero blocks
                    }
                    const qx = try gpa.alloc(i8, packedRows(rows) * d);
                    defer gpa.free(qx);
                    const dx = try gpa.alloc(f32, packedRows(rows) * nb);
                    defer gpa.free(dx);
                    const in = quantizeRows(qx, dx, x, rows, d);
                    const ldo = n + 1;
                    const got = try gpa.alloc(f32, rows * ldo);
                    defer gpa.free(got);
                    @memset(got, -1);
                    const wsum = try gpa.alloc(i32, TILE_R * nb);
                    defer gpa.free(wsum);
                    const cut = @min(n, 4);
                    gemmRowsQ8(got, ldo, w, in, 0, cut, wsum);
                    gemmRowsQ8(got, ldo, w, in, cut, n, wsum);
                    var rq: [256]i8 = undefined;
                    var rd: [8]f32 = undefined;
                    const want = try gpa.alloc(f32, n);
                    defer gpa.free(want);
                    for (0..rows) |t| {
                        q8.quantizeActivation(rq[0..d], rd[0..nb], x[t * d ..][0..d]);
                        q8.matmulQ8Scalar(want, w, rq[0..d], rd[0..nb]);
                        for (want, got[t * ldo ..][0..n]) |a, b| {
                            if (round == 0) try testing.expectEqual(a, b) else try testing.expectApproxEqAbs(a, b, 1e-5 * (1 + @abs(a)));
                        }
                        try testing.expectEqual(@as(f32, -1), got[t * ldo + n]);
                    }
                }
            }
        }
    }
}
