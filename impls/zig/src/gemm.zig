//! The batched prefill's matrix-matrix products, out(T, n) = X(T, d) @ W(n, d)^T with W as the
//! file stores it (row-major, never repacked): fp32 here, Q8_0 in gemm_q8.zig.
//!
//! Shape: the activations are packed once per input (shared by the products that read it) into
//! panels of VL rows, element k of the panel's rows side by side in one vector. The register
//! tile is TILE_R weight rows x TILE_G panels: for each k, TILE_G panel vectors are loaded and
//! each weight w[r][k] is broadcast once, so the tile's TILE_R * TILE_G accumulators each hold
//! VL outputs of one weight row and need no horizontal sum at the end. The panels of a token
//! block (sized so that they stay in L2) are reused by every weight-row tile of a chunk, and
//! each weight-row tile (in L1) by every panel of the block: the weights stream from memory
//! once per token block, the activations from L2.

const std = @import("std");
const builtin = @import("builtin");
const model = @import("model.zig");
const kernels = @import("kernels.zig");
const half = @import("half.zig");
const Tensor = model.Tensor;
const testing = std.testing;

pub const VL = kernels.VL;
const V = @Vector(VL, f32);

const has_fma = switch (builtin.cpu.arch) {
    .aarch64, .aarch64_be => true,
    .x86_64, .x86 => builtin.cpu.has(.x86, .fma),
    else => false,
};

/// Vector registers the tile may fill: 32 with AVX-512 and on arm64, 16 with AVX/AVX2 (and
/// assumed elsewhere).
const n_regs = switch (builtin.cpu.arch) {
    .x86_64, .x86 => if (builtin.cpu.has(.x86, .avx512f)) 32 else 16,
    .aarch64, .aarch64_be => 32,
    else => 16,
};
/// Weight rows x panels of a register tile: accumulators plus the panel vectors and one
/// broadcast weight fill the register file without spilling (8 x 3 = 24 + 3 + 1 of 32;
/// 6 x 2 = 12 + 2 + 1 of 16), and there are more independent FMA chains than FMA latency times
/// FMA ports.
pub const TILE_R = if (n_regs == 32) 8 else 6;
pub const TILE_G = if (n_regs == 32) 3 else 2;

/// Bytes of packed activations a token block may take: about half of a 1-2 MiB L2, so that the
/// block stays there while the weight rows stream past it.
const BLOCK_BYTES = 768 * 1024;

/// acc + a * b, fused where the CPU has FMA (without it @mulAdd would be a slow libcall).
pub inline fn madd(acc: V, a: V, b: V) V {
    return if (has_fma) @mulAdd(V, a, b, acc) else acc + a * b;
}

/// Panels needed for `rows` activation rows.
pub fn panels(rows: usize) usize {
    return (rows + VL - 1) / VL;
}

/// Packs rows x[t * d ..][0..d] (t < rows) into panels: pack[(g * d + k) * VL + lane] =
/// x[(g * VL + lane) * d + k], zero for the rows past `rows` of the last panel.
pub fn packF32(pack: []f32, x: []const f32, rows: usize, d: usize) void {
    packPanelsF32(pack, x, rows, d, 0, panels(rows));
}

/// packF32 for panels [g0, g1) only, so that threads can share the packing.
pub fn packPanelsF32(pack: []f32, x: []const f32, rows: usize, d: usize, g0: usize, g1: usize) void {
    for (g0..g1) |g| {
        const p = pack[g * d * VL ..][0 .. d * VL];
        const live = @min(VL, rows - g * VL);
        if (live < VL) @memset(p, 0);
        for (0..live) |lane| {
            const row = x[(g * VL + lane) * d ..][0..d];
            for (row, 0..) |v, k| p[k * VL + lane] = v;
        }
    }
}

/// A product's operands: `pack` holds `rows` activation rows of width d (packF32).
pub const Packed = struct {
    pack: []const f32,
    rows: usize,
    d: usize,
};

/// out[t * ldo + r] = X[t] . W[r] for every activation row t and weight rows r in [r0, r1).
pub fn gemmRowsF32(out: []f32, ldo: usize, w: Tensor, in: Packed, r0: usize, r1: usize) void {
    gemmRows(null, out, ldo, w, in, r0, r1, &.{});
}

/// gemmRowsF32 for 16-bit weights (the activation packed as for fp32 ones): each tile's TILE_R weight rows are widened to float32 into `scratch`
/// (TILE_R * d floats, one per concurrent caller), where they stay in L1 while every panel of
/// the token block passes over them, so the tile itself is the fp32 one.
pub fn gemmRows16(comptime k: half.Kind, out: []f32, ldo: usize, w: []align(1) const half.Elem(k), in: Packed, r0: usize, r1: usize, scratch: []f32) void {
    gemmRows(k, out, ldo, w, in, r0, r1, scratch);
}

fn Weights(comptime k: ?half.Kind) type {
    return if (k) |kind| []align(1) const half.Elem(kind) else Tensor;
}

fn gemmRows(comptime k: ?half.Kind, out: []f32, ldo: usize, w: Weights(k), in: Packed, r0: usize, r1: usize, scratch: []f32) void {
    const d = in.d;
    const n_panels = panels(in.rows);
    const block = @max(TILE_G, (BLOCK_BYTES / (d * VL * 4)) / TILE_G * TILE_G);
    var g0: usize = 0;
    while (g0 < n_panels) : (g0 += block) {
        const g1 = @min(n_panels, g0 + block);
        var r = r0;
        while (r + TILE_R <= r1) : (r += TILE_R) panelsRows(k, TILE_R, out, ldo, w, in, r, g0, g1, scratch);
        while (r + 4 <= r1) : (r += 4) panelsRows(k, 4, out, ldo, w, in, r, g0, g1, scratch);
        while (r < r1) : (r += 1) panelsRows(k, 1, out, ldo, w, in, r, g0, g1, scratch);
    }
}

/// Weight rows [r, r + R) against panels [g0, g1), TILE_G panels at a time (16-bit rows
/// widened into `scratch` first).
inline fn panelsRows(comptime k: ?half.Kind, comptime R: usize, out: []f32, ldo: usize, w: Weights(k), in: Packed, r: usize, g0: usize, g1: usize, scratch: []f32) void {
    const d = in.d;
    var wt: Tensor = undefined;
    var wrow: usize = undefined;
    if (k) |kind| {
        half.widenRow(kind, scratch[0 .. R * d], w[r * d ..][0 .. R * d]);
        wt = scratch[0 .. R * d];
        wrow = 0;
    } else {
        wt = w;
        wrow = r;
    }
    var g = g0;
    while (g + TILE_G <= g1) : (g += TILE_G) tile(R, TILE_G, out, ldo, wt, wrow, in, r, g);
    switch (g1 - g) {
        inline 1...TILE_G - 1 => |left| tile(R, left, out, ldo, wt, wrow, in, r, g),
        else => {},
    }
}

/// Output columns [r, r + R) from weight rows [wrow, wrow + R) of `w`.
fn tile(comptime R: usize, comptime G: usize, out: []f32, ldo: usize, w: Tensor, wrow: usize, in: Packed, r: usize, g: usize) void {
    const d = in.d;
    var acc: [R][G]V = @splat(@splat(@splat(0)));
    var wr: [R][*]align(1) const f32 = undefined;
    inline for (0..R) |i| wr[i] = w[(wrow + i) * d ..].ptr;
    const p = in.pack[g * d * VL ..].ptr;
    for (0..d) |k| {
        var xv: [G]V = undefined;
        inline for (0..G) |j| xv[j] = p[(j * d + k) * VL ..][0..VL].*;
        inline for (0..R) |i| {
            const wb: V = @splat(wr[i][k]);
            inline for (0..G) |j| acc[i][j] = madd(acc[i][j], xv[j], wb);
        }
    }
    inline for (0..G) |j| {
        const t0 = (g + j) * VL;
        const live = @min(VL, in.rows - @min(in.rows, t0));
        inline for (0..R) |i| {
            const a: [VL]f32 = acc[i][j];
            for (0..live) |lane| out[(t0 + lane) * ldo + r + i] = a[lane];
        }
    }
}

test "batched f32 kernel against a scalar loop: odd T, n and d" {
    const gpa = testing.allocator;
    var prng: std.Random.DefaultPrng = .init(27);
    const rand = prng.random();
    for ([_]usize{ 64, 96, 172 }) |d| {
        for ([_]usize{ 1, 7, 33 }) |rows| {
            for ([_]usize{ 1, 3, TILE_R + 5, 2 * TILE_R + 4 + 3 }) |n| {
                const x = try gpa.alloc(f32, rows * d);
                defer gpa.free(x);
                const w = try gpa.alloc(f32, n * d);
                defer gpa.free(w);
                for (x) |*v| v.* = rand.floatNorm(f32);
                for (w) |*v| v.* = rand.floatNorm(f32);
                const pack = try gpa.alloc(f32, panels(rows) * VL * d);
                defer gpa.free(pack);
                packF32(pack, x, rows, d);
                const ldo = n + 2; // a row stride wider than n: the cache rows' layout
                const got = try gpa.alloc(f32, rows * ldo);
                defer gpa.free(got);
                @memset(got, -1);
                const in: Packed = .{ .pack = pack, .rows = rows, .d = d };
                // two chunks of rows, the second starting off a multiple of the tile
                const cut = @min(n, 4);
                gemmRowsF32(got, ldo, w, in, 0, cut);
                gemmRowsF32(got, ldo, w, in, cut, n);
                for (0..rows) |t| {
                    for (0..n) |r| {
                        var want: f32 = 0;
                        for (0..d) |k| want += x[t * d + k] * w[r * d + k];
                        try testing.expectApproxEqAbs(want, got[t * ldo + r], 1e-4 * (1 + @abs(want)));
                    }
                    for (n..ldo) |r| try testing.expectEqual(@as(f32, -1), got[t * ldo + r]);
                }
            }
        }
    }
}

test "batched 16-bit kernels against the scalar formula: odd T, n and d" {
    const gpa = testing.allocator;
    var prng: std.Random.DefaultPrng = .init(31);
    const rand = prng.random();
    inline for (.{ half.Kind.f16, half.Kind.bf16 }) |k| {
        for ([_]usize{ 64, 96, 172, 288 }) |d| {
            for ([_]usize{ 1, 7, 33 }) |rows| {
                for ([_]usize{ 1, 3, TILE_R + 5, 2 * TILE_R + 4 + 3 }) |n| {
                    const x = try gpa.alloc(f32, rows * d);
                    defer gpa.free(x);
                    const w = try gpa.alloc(half.Elem(k), n * d);
                    defer gpa.free(w);
                    for (x) |*v| v.* = rand.floatNorm(f32);
                    for (w) |*v| v.* = switch (k) {
                        .f16 => @floatCast(rand.floatNorm(f32) * 0.1),
                        .bf16 => @truncate(@as(u32, @bitCast(rand.floatNorm(f32) * 0.1)) >> 16),
                    };
                    const pack = try gpa.alloc(f32, panels(rows) * VL * d);
                    defer gpa.free(pack);
                    packF32(pack, x, rows, d);
                    const scratch = try gpa.alloc(f32, TILE_R * d);
                    defer gpa.free(scratch);
                    const ldo = n + 2;
                    const got = try gpa.alloc(f32, rows * ldo);
                    defer gpa.free(got);
                    @memset(got, -1);
                    const in: Packed = .{ .pack = pack, .rows = rows, .d = d };
                    const cut = @min(n, 4);
                    gemmRows16(k, got, ldo, w, in, 0, cut, scratch);
                    gemmRows16(k, got, ldo, w, in, cut, n, scratch);
                    const want = try gpa.alloc(f32, n);
                    defer gpa.free(want);
                    for (0..rows) |t| {
                        half.matmulScalar(k, want, w, x[t * d ..][0..d]);
                        for (want, got[t * ldo ..][0..n]) |a, b| try testing.expectApproxEqAbs(a, b, 1e-5 * (1 + @abs(a)));
                        for (n..ldo) |r| try testing.expectEqual(@as(f32, -1), got[t * ldo + r]);
                    }
                }
            }
        }
    }
}
