//! The fp32 kernels of the forward pass (Q8_0 ones are q8.zig's): @Vector dot products and the
//! matmul, rmsnorm, softmax. Batch-1 decoding streams every weight once per token, so the
//! matmul's job is to keep the memory bus busy: four weight rows per load of the input.

const std = @import("std");
const builtin = @import("builtin");
const model = @import("model.zig");
const Tensor = model.Tensor;
const testing = std.testing;

pub const VL = std.simd.suggestVectorLength(f32) orelse 4; // 16 with AVX-512, 8 with AVX2, 4 with NEON
const V = @Vector(VL, f32);
const has_fma = switch (builtin.cpu.arch) {
    .aarch64, .aarch64_be => true,
    .x86_64, .x86 => builtin.cpu.has(.x86, .fma),
    else => false,
};

/// acc + a * b, fused where the CPU has FMA (without it @mulAdd would be a slow libcall).
pub inline fn madd(acc: V, a: V, b: V) V {
    return if (has_fma) @mulAdd(V, a, b, acc) else acc + a * b;
}

/// The lanes of v summed as a tree (halves added until one lane is left). @reduce(.Add) on
/// floats adds the lanes in order, one dependent add after another: in the f32 matmul those
/// chains (four rows of 16 lanes) were the hottest instructions, costing more than the rows'
/// FMAs (measured in the port's README, "Performance levers").
pub fn sumLanes(comptime n: usize, v: @Vector(n, f32)) f32 {
    if (n == 1) return v[0];
    const h = n / 2;
    const lo: @Vector(h, f32) = @shuffle(f32, v, undefined, std.simd.iota(i32, h));
    const hi: @Vector(h, f32) = @shuffle(f32, v, undefined, std.simd.iota(i32, h) + @as(@Vector(h, i32), @splat(h)));
    return sumLanes(h, lo + hi);
}

fn load(s: []align(1) const f32, i: usize) V {
    return s[i..][0..VL].*;
}

pub fn dot(a: []align(1) const f32, b: []align(1) const f32) f32 {
    var acc: V = @splat(0);
    var j: usize = 0;
    while (j + VL <= a.len) : (j += VL) acc = madd(acc, load(a, j), load(b, j));
    var sum = sumLanes(VL, acc);
    while (j < a.len) : (j += 1) sum += a[j] * b[j];
    return sum;
}

/// out[r] = W[r, :] . x for rows r in [r0, r1); W (rows, n) row-major. Four rows at a time so
/// that each x vector loaded serves four weight streams.
pub fn matmulRowsF32(out: []f32, w: Tensor, x: []const f32, r0: usize, r1: usize) void {
    const n = x.len;
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
            const xv = load(x, j);
            a0 = madd(a0, load(w0, j), xv);
            a1 = madd(a1, load(w1, j), xv);
            a2 = madd(a2, load(w2, j), xv);
            a3 = madd(a3, load(w3, j), xv);
        }
        var s: [4]f32 = .{ sumLanes(VL, a0), sumLanes(VL, a1), sumLanes(VL, a2), sumLanes(VL, a3) };
        while (j < n) : (j += 1) {
            s[0] += w0[j] * x[j];
            s[1] += w1[j] * x[j];
            s[2] += w2[j] * x[j];
            s[3] += w3[j] * x[j];
        }
        out[i..][0..4].* = s;
    }
    while (i < r1) : (i += 1) out[i] = dot(w[i * n ..][0..n], x);
}

/// `eps` is the file's (contract 3), 1e-5 unless a GGUF states another.
pub fn rmsnorm(o: []f32, x: []const f32, weight: Tensor, eps: f32) void {
    var ss: f32 = 0;
    for (x) |xi| ss += xi * xi;
    ss = ss / @as(f32, @floatFromInt(x.len)) + eps;
    const inv = 1.0 / @sqrt(ss);
    for (o, x, weight[0..x.len]) |*oi, xi, wi| oi.* = wi * (inv * xi);
}

pub fn softmax(x: []f32) void {
    var max_val = x[0]; // find max value (for numerical stability)
    for (x[1..]) |v| max_val = @max(max_val, v);
    var sum: f32 = 0;
    for (x) |*v| {
        v.* = @exp(v.* - max_val);
        sum += v.*;
    }
    for (x) |*v| v.* /= sum;
}

test "matmul kernel matches a scalar product, tails included" {
    // lengths that leave the vector loop and the scalar tail work
    inline for (.{ 5, 37, 2 * VL + VL + 3, 4 * VL }) |n| {
        var w: [7 * n]f32 = undefined;
        var x: [n]f32 = undefined;
        for (&w, 0..) |*v, i| v.* = @floatFromInt(@as(i32, @intCast(i % 11)) - 5);
        for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 0.25;
        var out: [7]f32 = undefined;
        matmulRowsF32(&out, &w, &x, 0, 7);
        for (out, 0..) |o, r| {
            var want: f32 = 0;
            for (0..n) |j| want += w[r * n + j] * x[j];
            try testing.expectApproxEqAbs(want, o, 1e-3);
        }
    }
}
