//! F16 and BF16 weights (GGUF), as docs/port-contract.md ("GGUF F16 and BF16") defines their
//! products: each weight widened to float32 exactly, the activation left in float32 (not
//! rounded to 16 bits as llama.cpp does: the contract says why), float32 products and sums.
//!
//! F16 widens with a half-to-single conversion (`vcvtph2ps` with F16C or AVX-512, `fcvtl` on
//! arm64, LLVM's own expansion elsewhere), BF16 by moving its bits to the top of
//! a 32-bit lane. Decoding is memory-bound, so the weights are widened in registers as they
//! stream past, never copied; the batched kernel (gemm.zig) widens a tile of rows at a time.

const std = @import("std");
const kernels = @import("kernels.zig");
const testing = std.testing;

pub const VL = kernels.VL;
const V = @Vector(VL, f32);
const madd = kernels.madd;
const sumLanes = kernels.sumLanes;

pub const Kind = enum { f16, bf16 };

/// How a value of each kind is stored: IEEE half, or the bits of a bfloat16.
pub fn Elem(comptime k: Kind) type {
    return switch (k) {
        .f16 => f16,
        .bf16 => u16,
    };
}

/// n values as float32, exactly.
pub inline fn widenVec(comptime k: Kind, comptime n: usize, v: @Vector(n, Elem(k))) @Vector(n, f32) {
    return switch (k) {
        .f16 => @floatCast(v),
        .bf16 => @bitCast(@as(@Vector(n, u32), v) << @splat(16)),
    };
}

pub inline fn widen(comptime k: Kind, v: Elem(k)) f32 {
    return switch (k) {
        .f16 => v,
        .bf16 => @bitCast(@as(u32, v) << 16),
    };
}

inline fn load(comptime k: Kind, s: []align(1) const Elem(k), i: usize) V {
    return widenVec(k, VL, s[i..][0..VL].*);
}

/// A row of 16-bit values as float32 (the embedding lookup).
pub fn widenRow(comptime k: Kind, out: []f32, row: []align(1) const Elem(k)) void {
    var j: usize = 0;
    while (j + VL <= out.len) : (j += VL) out[j..][0..VL].* = load(k, row, j);
    while (j < out.len) : (j += 1) out[j] = widen(k, row[j]);
}

/// out[r] = W[r, :] . xr for rows r in [r0, r1), W (rows, n) 16-bit row-major, `xr` the
/// float32 activation. As kernels.matmulRowsF32: four rows at a time,
/// each activation vector loaded once for four weight streams, each weight vector widened in
/// registers.
pub fn matmulRows16(comptime k: Kind, out: []f32, w: []align(1) const Elem(k), xr: []const f32, r0: usize, r1: usize) void {
    const n = xr.len;
    var i = r0;
    while (i + 4 <= r1) : (i += 4) {
        const w0 = w[i * n ..][0..n];
        const w1 = w[(i + 1) * n ..][0..n];
        const w2 = w[(i + 2) * n ..][0..n];
        const w3 = w[(i + 3) * n ..][0..n];
        var a0: V = @splat(0);
        var a1: V = @splat(0);
        var a2: V = @splat(0);
        var a3: V = @splat(0);
        var j: usize = 0;
        while (j + VL <= n) : (j += VL) {
            const xv: V = xr[j..][0..VL].*;
            a0 = madd(a0, load(k, w0, j), xv);
            a1 = madd(a1, load(k, w1, j), xv);
            a2 = madd(a2, load(k, w2, j), xv);
            a3 = madd(a3, load(k, w3, j), xv);
        }
        var s: [4]f32 = .{ sumLanes(VL, a0), sumLanes(VL, a1), sumLanes(VL, a2), sumLanes(VL, a3) };
        while (j < n) : (j += 1) {
            s[0] += widen(k, w0[j]) * xr[j];
            s[1] += widen(k, w1[j]) * xr[j];
            s[2] += widen(k, w2[j]) * xr[j];
            s[3] += widen(k, w3[j]) * xr[j];
        }
        out[i..][0..4].* = s;
    }
    while (i < r1) : (i += 1) {
        const wr = w[i * n ..][0..n];
        var acc: V = @splat(0);
        var j: usize = 0;
        while (j + VL <= n) : (j += VL) acc = madd(acc, load(k, wr, j), xr[j..][0..VL].*);
        var s = sumLanes(VL, acc);
        while (j < n) : (j += 1) s += widen(k, wr[j]) * xr[j];
        out[i] = s;
    }
}

// ----------------------------------------------------------------------------
// tests: the plain definitions, one value at a time

/// The contract's formula in plain scalar code: each weight widened, a float32 sum of float32
/// products in index order.
pub fn matmulScalar(comptime k: Kind, out: []f32, w: []align(1) const Elem(k), x: []const f32) void {
    const n = x.len;
    for (out, 0..) |*o, r| {
        var acc: f32 = 0;
        for (0..n) |j| acc += widen(k, w[r * n + j]) * x[j];
        o.* = acc;
    }
}

test "F16: widening is exact, subnormals included" {
    // smallest subnormal, largest subnormal, smallest normal, 1, largest, -2, infinity
    const bits = [_]u16{ 0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0xc000, 0x7c00 };
    const want = [_]f32{ 0x1p-24, 0x3ffp-24, 0x1p-14, 1, 65504, -2, std.math.inf(f32) };
    for (bits, want) |b, w| try testing.expectEqual(w, widen(.f16, @bitCast(b)));
    var row: [VL + 3]f16 = undefined;
    for (&row, 0..) |*v, i| v.* = @bitCast(@as(u16, @intCast(i * 977 % 0x7c00)));
    var out: [VL + 3]f32 = undefined;
    widenRow(.f16, &out, &row);
    for (row, out) |h, f| try testing.expectEqual(@as(f32, h), f);
}

test "BF16: widening is a shift, NaN stays NaN" {
    try testing.expectEqual(@as(f32, 1), widen(.bf16, 0x3f80));
    try testing.expectEqual(@as(f32, -2), widen(.bf16, 0xc000));
    try testing.expect(std.math.isNan(widen(.bf16, 0x7fc1)));
    try testing.expect(std.math.isNan(widen(.bf16, 0xffc0)));
    try testing.expectEqual(std.math.inf(f32), widen(.bf16, 0x7f80));
}

test "16-bit matmul kernel against the scalar formula: odd rows and lengths" {
    const gpa = testing.allocator;
    var prng: std.Random.DefaultPrng = .init(29);
    const rand = prng.random();
    inline for (.{ Kind.f16, Kind.bf16 }) |k| {
        for ([_]usize{ 5, 64, 96, 172, 288 }) |n| {
            const rows = 11; // two 4-row passes and three single rows
            const w = try gpa.alloc(Elem(k), rows * n);
            defer gpa.free(w);
            for (w) |*v| v.* = switch (k) {
                .f16 => @floatCast(rand.floatNorm(f32) * 0.1),
                .bf16 => @truncate(@as(u32, @bitCast(rand.floatNorm(f32) * 0.1)) >> 16),
            };
            w[3] = switch (k) { // a subnormal weight
                .f16 => @bitCast(@as(u16, 0x0005)),
                .bf16 => 0x0005,
            };
            const x = try gpa.alloc(f32, n);
            defer gpa.free(x);
            for (x) |*v| v.* = rand.floatNorm(f32);
            x[n - 1] = 70000; // beyond F16's range: not rounded, so not infinity
            const xr = x;
            var want: [rows]f32 = undefined;
            var got: [rows]f32 = undefined;
            matmulScalar(k, &want, w, x);
            matmulRows16(k, &got, w, xr, 0, rows);
            for (want, got) |a, b| try testing.expectApproxEqAbs(a, b, 1e-5 * (1 + @abs(a)));
            // a chunk that starts off a multiple of four, from unaligned bytes
            const bytes = try gpa.alloc(u8, rows * n * 2 + 1);
            defer gpa.free(bytes);
            @memcpy(bytes[1..], std.mem.sliceAsBytes(w));
            const wu: []align(1) const Elem(k) = @as([*]align(1) const Elem(k), @ptrCast(bytes.ptr + 1))[0 .. rows * n];
            @memset(&got, 0);
            matmulRows16(k, &got, wu, xr, 1, rows);
            for (want[1..], got[1..]) |a, b| try testing.expectApproxEqAbs(a, b, 1e-5 * (1 + @abs(a)));
        }
    }
}
