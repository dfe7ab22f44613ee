//! Inference for Llama-2 Transformer models in pure Zig: karpathy/llama2.c's run.c, ported for
//! polyllama (docs/port-contract.md). Reads llama2.c v0/v1 checkpoints and GGUF files (F32 or
//! Q8_0 matrices) into one page-aligned region (huge pages on Linux, else a file mapping);
//! batch-1 decoding with @Vector kernels (fp32, and int8 dot products for Q8_0 weights) and a
//! persistent worker pool.

const std = @import("std");
const builtin = @import("builtin");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const checkpoint = @import("checkpoint.zig");
const Config = model.Config;
const Tensor = model.Tensor;
const Matrix = model.Matrix;
const Q8Block = model.Q8Block;
const TransformerWeights = model.TransformerWeights;
const Vocab = model.Vocab;

comptime {
    // Weights are used in place from the little-endian file's bytes.
    if (builtin.cpu.arch.endian() != .little) @compileError("polyllama's Zig port needs a little-endian host");
}

const PORT_NAME = "zig";
const USAGE = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] " ++
    "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1]";
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BAD_FILE: u8 = 3;

// ----------------------------------------------------------------------------
// Errors: every failure is one `error:` line on stderr and the contract's exit code.
// Nothing below panics on bad input; these functions end the process instead.

fn usageError(comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: " ++ fmt ++ "\n" ++ USAGE ++ "\n", args);
    std.process.exit(EXIT_USAGE);
}

fn badFile(path: []const u8, comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: {s}: " ++ fmt ++ "\n", .{path} ++ args);
    std.process.exit(EXIT_BAD_FILE);
}

fn runtimeError(comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: " ++ fmt ++ "\n", args);
    std.process.exit(EXIT_RUNTIME);
}

fn outOfMemory() noreturn {
    runtimeError("out of memory", .{});
}

fn allocOrDie(gpa: Allocator, comptime T: type, n: usize) []T {
    return gpa.alloc(T, n) catch outOfMemory();
}

/// A reader's refusal (or its failed allocation) as the contract's error line and exit code.
fn readFailed(err: model.ReadError, diag: *const model.Diag) noreturn {
    switch (err) {
        error.BadFile => badFile(diag.path, "{s}", .{diag.problem()}),
        error.OutOfMemory => outOfMemory(),
    }
}

// ----------------------------------------------------------------------------
// Transformer model: config, weights and vocabulary are model.zig's, read by checkpoint.zig
// and gguf.zig; here is what a run adds to them

/// The activations of one position plus the KV cache of the whole sequence.
const RunState = struct {
    x: []f32, // activation at current time stamp (dim)
    xb: []f32, // same, but inside a residual branch (dim)
    xb2: []f32, // an additional buffer just for convenience (dim)
    hb: []f32, // buffer for hidden dimension in the ffn (hidden_dim)
    hb2: []f32, // buffer for hidden dimension in the ffn (hidden_dim)
    q: []f32, // query (dim)
    att: []f32, // attention scores, one row per concurrent head (min(n_heads, n_chunks), seq_len)
    logits: []f32, // output logits (vocab_size)
    qx: []i8, // the input of a Q8_0 matmul quantized, 32 per block (max(dim, hidden_dim))
    dx: []f32, // its blocks' scales (max(dim, hidden_dim) / 32)
    rope_cos: []f32, // rotation of each (i, i+1) pair at the current position (dim / 2)
    rope_sin: []f32, // (dim / 2)
    key_cache: []f32, // (layer, seq_len, kv_dim)
    value_cache: []f32, // (layer, seq_len, kv_dim)
};

const Transformer = struct {
    config: Config,
    weights: TransformerWeights,
    state: RunState,
    file: []const u8, // the checkpoint's bytes, which the weights point into (munmap frees them)
    vocab: ?Vocab, // GGUF embeds its tokenizer
};

fn buildRunState(gpa: Allocator, c: Config, n_chunks: usize) RunState {
    const kv_len = c.n_layers * c.seq_len * c.kvDim();
    const widest = @max(c.dim, c.hidden_dim);
    return .{
        .x = allocOrDie(gpa, f32, c.dim),
        .xb = allocOrDie(gpa, f32, c.dim),
        .xb2 = allocOrDie(gpa, f32, c.dim),
        .hb = allocOrDie(gpa, f32, c.hidden_dim),
        .hb2 = allocOrDie(gpa, f32, c.hidden_dim),
        .q = allocOrDie(gpa, f32, c.dim),
        .att = allocOrDie(gpa, f32, std.math.mul(usize, @min(c.n_heads, n_chunks), c.seq_len) catch outOfMemory()),
        .logits = allocOrDie(gpa, f32, c.vocab_size),
        .qx = allocOrDie(gpa, i8, widest),
        .dx = allocOrDie(gpa, f32, widest / QB),
        .rope_cos = allocOrDie(gpa, f32, c.dim / 2),
        .rope_sin = allocOrDie(gpa, f32, c.dim / 2),
        .key_cache = allocOrDie(gpa, f32, kv_len),
        .value_cache = allocOrDie(gpa, f32, kv_len),
    };
}

fn freeRunState(gpa: Allocator, s: *RunState) void {
    inline for (@typeInfo(RunState).@"struct".field_names) |name| gpa.free(@field(s, name));
}

fn buildTransformer(gpa: Allocator, io: Io, path: []const u8, n_workers: usize, huge_pages: bool) Transformer {
    var diag: model.Diag = .{};
    const m = checkpoint.read(gpa, io, &diag, path, huge_pages) catch |err| readFailed(err, &diag);
    return .{
        .config = m.config,
        .weights = m.weights,
        .state = buildRunState(gpa, m.config, if (n_workers == 1) 1 else n_workers * CHUNKS_PER_WORKER),
        .file = m.file,
        .vocab = m.vocab,
    };
}

fn freeTransformer(gpa: Allocator, t: *Transformer) void {
    freeRunState(gpa, &t.state);
    gpa.free(t.weights.layers);
    if (t.file.len > 0) std.posix.munmap(@alignCast(@constCast(t.file)));
}

// ----------------------------------------------------------------------------
// Thread pool: workers are started once and park between jobs. A job is split into a fixed
// number of chunks (CHUNKS_PER_WORKER per worker); the main thread and the workers claim chunks
// with one atomic add until none is left, so a worker the OS has descheduled delays a job by at
// most the chunk it holds, never by its whole share.

const SPIN_LIMIT = 2000; // pause loops (~50-100 us) before a waiting thread sleeps or yields its core
const CHUNKS_PER_WORKER = 4;

const Pool = struct {
    io: Io,
    n_workers: usize,
    n_chunks: u32,
    threads: []std.Thread,
    job: *const fn (ctx: *const anyopaque, chunk: usize, n_chunks: usize) void = undefined,
    ctx: *const anyopaque = undefined,
    /// (job id << 32) | next unclaimed chunk: one fetchAdd claims a chunk of the current job
    claim: std.atomic.Value(u64) = .init(0),
    epoch: std.atomic.Value(u32) = .init(0), // the current job id, for the futex
    done: std.atomic.Value(u32) = .init(0), // chunks of the current job finished
    sleepers: std.atomic.Value(u32) = .init(0), // workers parked on the futex
    quit: std.atomic.Value(bool) = .init(false),

    /// Runs `func(ctx, chunk, n_chunks)` for every chunk and returns when all are done.
    fn run(pool: *Pool, ctx: anytype, comptime func: fn (@TypeOf(ctx), usize, usize) void) void {
        const Ctx = @TypeOf(ctx);
        const Thunk = struct {
            fn call(p: *const anyopaque, chunk: usize, n: usize) void {
                func(@as(Ctx, @ptrCast(@alignCast(p))), chunk, n);
            }
        };
        if (pool.n_workers == 1) return func(ctx, 0, 1);
        pool.job = Thunk.call;
        pool.ctx = ctx;
        pool.done.store(0, .monotonic);
        const id = pool.epoch.load(.monotonic) +% 1;
        pool.claim.store(@as(u64, id) << 32, .release); // publishes job, ctx and done
        pool.epoch.store(id, .seq_cst);
        if (pool.sleepers.load(.seq_cst) > 0) pool.io.futexWake(u32, &pool.epoch.raw, std.math.maxInt(u32));
        _ = pool.work();
        var spins: usize = 0;
        while (pool.done.load(.acquire) != pool.n_chunks) {
            spins += 1;
            if (spins < SPIN_LIMIT) std.atomic.spinLoopHint() else std.Thread.yield() catch {};
        }
    }

    /// Claims and runs chunks until the job has none left; returns the job's id.
    fn work(pool: *Pool) u32 {
        while (true) {
            const c = pool.claim.fetchAdd(1, .acq_rel);
            const chunk: u32 = @truncate(c);
            // a claimed chunk keeps its job open, so job and ctx are still this job's
            if (chunk >= pool.n_chunks) return @intCast(c >> 32);
            pool.job(pool.ctx, chunk, pool.n_chunks);
            _ = pool.done.fetchAdd(1, .release);
        }
    }

    fn workerMain(pool: *Pool) void {
        var seen: u32 = 0;
        while (true) {
            var spins: usize = 0;
            while (pool.epoch.load(.acquire) == seen) {
                spins += 1;
                if (spins < SPIN_LIMIT) {
                    std.atomic.spinLoopHint();
                } else {
                    _ = pool.sleepers.fetchAdd(1, .seq_cst);
                    pool.io.futexWaitUncancelable(u32, &pool.epoch.raw, seen);
                    _ = pool.sleepers.fetchSub(1, .seq_cst);
                }
            }
            if (pool.quit.load(.acquire)) return;
            seen = pool.work();
        }
    }
};

/// -j 1 starts no thread at all; -j N starts N-1 workers next to the main thread.
fn buildPool(gpa: Allocator, io: Io, n_workers: usize) *Pool {
    const pool = gpa.create(Pool) catch outOfMemory();
    pool.* = .{ .io = io, .n_workers = n_workers, .n_chunks = @intCast(n_workers * CHUNKS_PER_WORKER), .threads = allocOrDie(gpa, std.Thread, n_workers - 1) };
    for (pool.threads, 1..) |*t, w| {
        t.* = std.Thread.spawn(.{ .stack_size = 1 << 20 }, Pool.workerMain, .{pool}) catch |err|
            runtimeError("cannot start worker thread {d} of {d}: {t}", .{ w, n_workers, err });
    }
    return pool;
}

fn freePool(gpa: Allocator, pool: *Pool) void {
    pool.quit.store(true, .release);
    _ = pool.epoch.fetchAdd(1, .seq_cst);
    pool.io.futexWake(u32, &pool.epoch.raw, std.math.maxInt(u32));
    for (pool.threads) |t| t.join();
    gpa.free(pool.threads);
    gpa.destroy(pool);
}

/// The share [lo, hi) of `n` items in chunk `k` of `n_chunks`; boundaries fall on multiples
/// of 4 so that the matmul runs whole 4-row blocks.
fn share(n: usize, k: usize, n_chunks: usize) [2]usize {
    const lo = if (k == 0) 0 else (n * k / n_chunks) & ~@as(usize, 3);
    const hi = if (k + 1 == n_chunks) n else (n * (k + 1) / n_chunks) & ~@as(usize, 3);
    return .{ @min(lo, n), @min(hi, n) };
}

// ----------------------------------------------------------------------------
// Neural net blocks; the dynamics of the Transformer

const VL = std.simd.suggestVectorLength(f32) orelse 4; // 16 with AVX-512, 8 with AVX2, 4 with NEON
const V = @Vector(VL, f32);
const has_fma = switch (builtin.cpu.arch) {
    .aarch64, .aarch64_be => true,
    .x86_64, .x86 => builtin.cpu.has(.x86, .fma),
    else => false,
};

/// acc + a * b, fused where the CPU has FMA (without it @mulAdd would be a slow libcall).
inline fn madd(acc: V, a: V, b: V) V {
    return if (has_fma) @mulAdd(V, a, b, acc) else acc + a * b;
}

/// The lanes of v summed as a tree (halves added until one lane is left). @reduce(.Add) on
/// floats adds the lanes in order, one dependent add after another: in the f32 matmul those
/// chains (four rows of 16 lanes) were the hottest instructions, costing more than the rows'
/// FMAs at 42M (docs/journal.md, "Evening levers").
fn sumLanes(comptime n: usize, v: @Vector(n, f32)) f32 {
    if (n == 1) return v[0];
    const h = n / 2;
    const lo: @Vector(h, f32) = @shuffle(f32, v, undefined, std.simd.iota(i32, h));
    const hi: @Vector(h, f32) = @shuffle(f32, v, undefined, std.simd.iota(i32, h) + @as(@Vector(h, i32), @splat(h)));
    return sumLanes(h, lo + hi);
}

fn load(s: []align(1) const f32, i: usize) V {
    return s[i..][0..VL].*;
}

fn dot(a: []align(1) const f32, b: []align(1) const f32) f32 {
    var acc: V = @splat(0);
    var j: usize = 0;
    while (j + VL <= a.len) : (j += VL) acc = madd(acc, load(a, j), load(b, j));
    var sum = sumLanes(VL, acc);
    while (j < a.len) : (j += 1) sum += a[j] * b[j];
    return sum;
}

/// out[r] = W[r, :] . x for rows r in [r0, r1); W (rows, n) row-major. Four rows at a time so
/// that each x vector loaded serves four weight streams.
fn matmulRowsF32(out: []f32, w: Tensor, x: []const f32, r0: usize, r1: usize) void {
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

// ----------------------------------------------------------------------------
// Q8_0 weights (GGUF), computed as llama.cpp's CPU backend does (docs/port-contract.md): the
// matmul's input is quantized to Q8_0 too, once per group of matmuls that share it, each block's
// dot product is an exact int32 sum of int8 products, and only its scaling and the sum over
// blocks are fp32.

const QB = model.Q8_BLOCK;
const F32xB = @Vector(QB, f32);
const I8xB = @Vector(QB, i8);
const I32xB = @Vector(QB, i32);

/// A matmul's input: fp32, and quantized when a weight of its group is Q8_0 (`qx` and `dx`
/// empty otherwise).
const Input = struct {
    x: []const f32,
    qx: []const i8 = &.{},
    dx: []const f32 = &.{},
};

/// llama.cpp's SIMD quantize_row_q8_0 (which differs from the reference quantizer the weights
/// went through): amax = max |x| per block, scale fp16(amax / 127) as the dot product uses it,
/// q = x * (127 / amax) rounded to nearest, ties to even.
fn quantizeActivation(qx: []i8, dx: []f32, x: []const f32) void {
    for (dx, 0..) |*d, b| {
        const v: F32xB = x[b * QB ..][0..QB].*;
        const amax = @reduce(.Max, @abs(v));
        d.* = @as(f16, @floatCast(amax / 127.0));
        const id: f32 = if (amax != 0) 127.0 / amax else 0;
        qx[b * QB ..][0..QB].* = roundToI8(v * @as(F32xB, @splat(id)));
    }
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
/// add at the end. Measured, build against build: docs/journal.md.
fn matmulRowsQ8(out: []f32, w: []const Q8Block, in: Input, r0: usize, r1: usize) void {
    const nb = in.dx.len; // blocks per row
    var i = r0;
    if (has_partials and nb >= 16) {
        while (i < r1) : (i += 1) {
            if (q8_prefetch and i + 4 < r1) prefetchBytes(std.mem.sliceAsBytes(w[(i + 4) * nb ..][0..nb]));
            out[i] = rowDot8(w[i * nb ..][0..nb], in);
        }
        return;
    }
    while (i + 4 <= r1) : (i += 4) {
        if (q8_prefetch and i + 8 <= r1) prefetchBytes(std.mem.sliceAsBytes(w[(i + 4) * nb ..][0 .. 4 * nb]));
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
/// alone left the 110M shape far below the memory's bandwidth; the lever is measured in
/// docs/journal.md. POLYLLAMA_Q8_PREFETCH=0 (read by main) turns it off, for before/after runs.
var q8_prefetch = true;

fn prefetchBytes(bytes: []const u8) void {
    var o: usize = 0;
    while (o < bytes.len) : (o += 64) @prefetch(bytes.ptr + o, .{ .rw = .read, .locality = 3, .cache = .data });
}

/// A Q8_0 row as fp32: d * q, exact.
fn dequantizeRow(out: []f32, blocks: []const Q8Block) void {
    for (blocks, 0..) |*blk, b| {
        const q: I8xB = blk.qs;
        out[b * QB ..][0..QB].* = @as(F32xB, @floatFromInt(q)) * @as(F32xB, @splat(blk.scale()));
    }
}

fn matmulRows(out: []f32, w: Matrix, in: Input, r0: usize, r1: usize) void {
    switch (w) {
        .f32 => |t| matmulRowsF32(out, t, in.x, r0, r1),
        .q8_0 => |q| matmulRowsQ8(out, q, in, r0, r1),
    }
}

/// `x` as the matmuls with weights `ws` read it: quantized once for all of them if any is
/// Q8_0 (whose rows, and so x, the reader has checked to be a multiple of 32 long).
fn matmulInput(s: *RunState, x: []const f32, ws: []const Matrix) Input {
    for (ws) |w| {
        if (w == .q8_0) {
            const nb = x.len / QB;
            quantizeActivation(s.qx[0 .. nb * QB], s.dx[0..nb], x);
            return .{ .x = x, .qx = s.qx[0 .. nb * QB], .dx = s.dx[0..nb] };
        }
    }
    return .{ .x = x };
}

/// Up to three matmuls sharing one input, split into chunks as one range of output rows
/// (q, k and v of a layer are one job).
const MatmulJob = struct {
    in: Input,
    outs: [3][]f32,
    ws: [3]Matrix,
    count: usize,

    fn work(job: *const MatmulJob, chunk: usize, n_chunks: usize) void {
        var total: usize = 0;
        for (job.outs[0..job.count]) |o| total += o.len;
        const r = share(total, chunk, n_chunks);
        var base: usize = 0;
        for (job.outs[0..job.count], job.ws[0..job.count]) |o, w| {
            const lo = @max(r[0], base);
            const hi = @min(r[1], base + o.len);
            if (lo < hi) matmulRows(o, w, job.in, lo - base, hi - base);
            base += o.len;
        }
    }
};

fn matmul(pool: *Pool, s: *RunState, out: []f32, w: Matrix, x: []const f32) void {
    const none: Matrix = .{ .f32 = &.{} };
    const job: MatmulJob = .{ .in = matmulInput(s, x, &.{w}), .outs = .{ out, &.{}, &.{} }, .ws = .{ w, none, none }, .count = 1 };
    pool.run(&job, MatmulJob.work);
}

/// hb = silu(w1 @ x) * (w3 @ x), each chunk a slice of the hidden rows.
const FfnJob = struct {
    in: Input,
    hb: []f32,
    hb2: []f32,
    w1: Matrix,
    w3: Matrix,

    fn work(job: *const FfnJob, chunk: usize, n_chunks: usize) void {
        const r = share(job.hb.len, chunk, n_chunks);
        matmulRows(job.hb, job.w1, job.in, r[0], r[1]);
        matmulRows(job.hb2, job.w3, job.in, r[0], r[1]);
        for (job.hb[r[0]..r[1]], job.hb2[r[0]..r[1]]) |*g, u| {
            g.* = g.* / (1.0 + @exp(-g.*)) * u; // silu(x) = x * sigmoid(x)
        }
    }
};

/// Multi-head attention at `pos` for one layer, heads split into chunks.
const AttentionJob = struct {
    c: Config,
    s: *const RunState,
    layer: usize,
    pos: usize,

    fn work(job: *const AttentionJob, chunk: usize, n_chunks: usize) void {
        const c = job.c;
        const s = job.s;
        const hs = c.headSize();
        const kv_dim = c.kvDim();
        const kv_mul = c.n_heads / c.n_kv_heads; // integer multiplier of the kv sharing in multiquery
        const loff = job.layer * c.seq_len * kv_dim; // kv cache layer offset for convenience
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(hs)));
        const lo = c.n_heads * chunk / n_chunks;
        const hi = c.n_heads * (chunk + 1) / n_chunks;
        if (lo == hi) return;
        // this chunk's own row of scores: chunks hold at most one head once there are as many
        // chunks as heads, so the row count is min(n_heads, n_chunks)
        const row = if (n_chunks >= c.n_heads) lo else chunk;
        const att = s.att[row * c.seq_len ..][0 .. job.pos + 1]; // (pos + 1)
        for (lo..hi) |h| {
            const q = s.q[h * hs ..][0..hs];
            const kvo = loff + (h / kv_mul) * hs;
            for (att, 0..) |*a, t| a.* = dot(q, s.key_cache[kvo + t * kv_dim ..][0..hs]) * scale;
            softmax(att);
            // weighted sum of the values, into xb (n_heads * head_size)
            const xb = s.xb[h * hs ..][0..hs];
            @memset(xb, 0);
            for (att, 0..) |a, t| {
                const v = s.value_cache[kvo + t * kv_dim ..][0..hs];
                for (xb, v) |*o, vi| o.* += a * vi;
            }
        }
    }
};

fn rmsnorm(o: []f32, x: []const f32, weight: Tensor) void {
    var ss: f32 = 0;
    for (x) |xi| ss += xi * xi;
    ss = ss / @as(f32, @floatFromInt(x.len)) + 1e-5;
    const inv = 1.0 / @sqrt(ss);
    for (o, x, weight[0..x.len]) |*oi, xi, wi| oi.* = wi * (inv * xi);
}

fn softmax(x: []f32) void {
    var max_val = x[0]; // find max value (for numerical stability)
    for (x[1..]) |v| max_val = @max(max_val, v);
    var sum: f32 = 0;
    for (x) |*v| {
        v.* = @exp(v.* - max_val);
        sum += v.*;
    }
    for (x) |*v| v.* /= sum;
}

/// cos/sin of RoPE's rotation for each adjacent pair (i, i+1) at `pos`, shared by all layers.
fn ropeTables(s: *RunState, c: Config, pos: usize) void {
    const hs: f32 = @floatFromInt(c.headSize());
    const p: f32 = @floatFromInt(pos);
    for (s.rope_cos, s.rope_sin, 0..) |*co, *si, pair| {
        const head_dim: f32 = @floatFromInt((pair * 2) % c.headSize());
        const freq: f32 = 1.0 / @as(f32, @floatCast(std.math.pow(f64, 10000.0, head_dim / hs)));
        const angle: f64 = p * freq; // rounded to f32 like run.c, then cos/sin computed exactly
        co.* = @floatCast(@cos(angle));
        si.* = @floatCast(@sin(angle));
    }
}

fn rotate(v: []f32, s: *const RunState) void {
    for (0..v.len / 2) |pair| {
        const v0 = v[2 * pair];
        const v1 = v[2 * pair + 1];
        const fcr = s.rope_cos[pair];
        const fci = s.rope_sin[pair];
        v[2 * pair] = v0 * fcr - v1 * fci;
        v[2 * pair + 1] = v0 * fci + v1 * fcr;
    }
}

fn forward(t: *Transformer, pool: *Pool, token: usize, pos: usize) []f32 {
    const c = t.config;
    const w = &t.weights;
    const s = &t.state;
    const dim = c.dim;
    const kv_dim = c.kvDim();

    // copy the token embedding into x
    switch (w.token_embedding) {
        .f32 => |e| @memcpy(s.x, e[token * dim ..][0..dim]),
        .q8_0 => |q| dequantizeRow(s.x, q[token * (dim / QB) ..][0 .. dim / QB]),
    }
    ropeTables(s, c, pos);

    for (w.layers, 0..) |*lw, l| {
        // attention rmsnorm
        rmsnorm(s.xb, s.x, lw.rms_att);

        // qkv matmuls for this position; k and v go straight into the cache row of pos
        const loff = l * c.seq_len * kv_dim; // kv cache layer offset for convenience
        const k = s.key_cache[loff + pos * kv_dim ..][0..kv_dim];
        const v = s.value_cache[loff + pos * kv_dim ..][0..kv_dim];
        const qkv: MatmulJob = .{ .in = matmulInput(s, s.xb, &.{ lw.wq, lw.wk, lw.wv }), .outs = .{ s.q, k, v }, .ws = .{ lw.wq, lw.wk, lw.wv }, .count = 3 };
        pool.run(&qkv, MatmulJob.work);

        // RoPE relative positional encoding: rotate each (i, i+1) pair of q and k
        rotate(s.q, s);
        rotate(k, s);

        // multihead attention, output in xb
        const att: AttentionJob = .{ .c = c, .s = s, .layer = l, .pos = pos };
        pool.run(&att, AttentionJob.work);

        // final matmul to get the output of the attention, then the residual connection
        matmul(pool, s, s.xb2, lw.wo, s.xb);
        for (s.x, s.xb2) |*xi, o| xi.* += o;

        // ffn rmsnorm, then w2(silu(w1(x)) * w3(x))
        rmsnorm(s.xb, s.x, lw.rms_ffn);
        const ffn: FfnJob = .{ .in = matmulInput(s, s.xb, &.{ lw.w1, lw.w3 }), .hb = s.hb, .hb2 = s.hb2, .w1 = lw.w1, .w3 = lw.w3 };
        pool.run(&ffn, FfnJob.work);
        matmul(pool, s, s.xb, lw.w2, s.hb);

        // residual connection
        for (s.x, s.xb) |*xi, o| xi.* += o;
    }

    // final rmsnorm, then the classifier into the logits
    rmsnorm(s.x, s.x, w.rms_final);
    matmul(pool, s, s.logits, w.wcls, s.x);
    return s.logits;
}

// ----------------------------------------------------------------------------
// The Byte Pair Encoding (BPE) Tokenizer that translates strings <-> tokens

const BOS = 1;
const EOS = 2;
const Tokenizer = struct {
    vocab: Vocab,
    lookup: std.StringHashMapUnmanaged(u32), // piece -> lowest id spelling it
    merge_buf: []u8, // room for two concatenated pieces
};

fn buildTokenizer(gpa: Allocator, vocab: Vocab) Tokenizer {
    var t: Tokenizer = .{ .vocab = vocab, .lookup = .empty, .merge_buf = allocOrDie(gpa, u8, 2 * vocab.max_token_length) };
    t.lookup.ensureTotalCapacity(gpa, @intCast(vocab.pieces.len)) catch outOfMemory();
    for (vocab.pieces, 0..) |p, i| {
        const gop = t.lookup.getOrPutAssumeCapacity(p);
        if (!gop.found_existing) gop.value_ptr.* = @intCast(i); // a duplicated piece keeps its lower id
    }
    return t;
}

fn freeTokenizer(gpa: Allocator, t: *Tokenizer) void {
    t.lookup.deinit(gpa);
    gpa.free(t.merge_buf);
}

const EncodeError = error{ ByteTokenMissing, OutOfMemory };

/// BPE-encodes `text` as run.c does: BOS, the dummy-prefix space, UTF-8 code points (or their
/// bytes as <0xXX> tokens), then greedy merges of the best-scoring adjacent pair.
fn encode(t: *const Tokenizer, gpa: Allocator, text: []const u8, bos: bool, eos: bool) EncodeError![]u32 {
    const vocab_size = t.vocab.pieces.len;
    var tokens = try gpa.alloc(u32, text.len + 3);
    errdefer gpa.free(tokens);
    var n: usize = 0;
    if (bos) {
        tokens[n] = BOS;
        n += 1;
    }
    if (text.len > 0) {
        // the dummy prefix: sentencepiece's add_dummy_prefix puts a space before the text
        tokens[n] = t.lookup.get(" ") orelse return error.ByteTokenMissing;
        n += 1;
    }
    var i: usize = 0;
    while (i < text.len) {
        // one UTF-8 code point: a start byte and up to 3 continuation bytes (10xxxxxx)
        const start = i;
        i += 1;
        while (i < text.len and text[i] & 0xC0 == 0x80 and i - start < 4) i += 1;
        if (t.lookup.get(text[start..i])) |id| {
            tokens[n] = id;
            n += 1;
        } else {
            // byte fallback: the first 3 ids are <unk>, <s>, </s>, then the 256 byte tokens
            for (text[start..i]) |b| {
                if (@as(usize, b) + 3 >= vocab_size) return error.ByteTokenMissing;
                tokens[n] = @as(u32, b) + 3;
                n += 1;
            }
        }
    }
    // merge the best consecutive pair each iteration, according to the scores in vocab_scores
    while (true) {
        var best_score = -std.math.inf(f32);
        var best_id: u32 = 0;
        var best_idx: ?usize = null;
        for (0..n -| 1) |k| {
            const a = t.vocab.pieces[tokens[k]];
            const b = t.vocab.pieces[tokens[k + 1]];
            @memcpy(t.merge_buf[0..a.len], a);
            @memcpy(t.merge_buf[a.len..][0..b.len], b);
            if (t.lookup.get(t.merge_buf[0 .. a.len + b.len])) |id| {
                if (t.vocab.scores[id] > best_score) {
                    best_score = t.vocab.scores[id];
                    best_id = id;
                    best_idx = k;
                }
            }
        }
        const k = best_idx orelse break; // no more pairs to merge
        tokens[k] = best_id;
        std.mem.copyForwards(u32, tokens[k + 1 .. n - 1], tokens[k + 2 .. n]);
        n -= 1;
    }
    if (eos) {
        tokens[n] = EOS;
        n += 1;
    }
    return gpa.realloc(tokens, n); // the caller frees exactly what it got
}

const byte_values: [256]u8 = blk: {
    var b: [256]u8 = undefined;
    for (&b, 0..) |*v, i| v.* = i;
    break :blk b;
};

/// The bytes `token` prints as after `prev`: a space after BOS is dropped, and a piece of the
/// form <0xHH> stands for that raw byte.
fn decode(t: *const Tokenizer, prev: u32, token: u32) []const u8 {
    var piece = t.vocab.pieces[token];
    if (prev == BOS and piece.len > 0 and piece[0] == ' ') piece = piece[1..];
    if (piece.len == 6 and std.mem.startsWith(u8, piece, "<0x") and piece[5] == '>') {
        const byte = std.fmt.parseInt(u8, piece[3..5], 16) catch return piece;
        if (std.ascii.isHex(piece[3]) and std.ascii.isHex(piece[4])) return byte_values[byte..][0..1];
    }
    return piece;
}

/// What run.c's safe_printf would print: nothing for an empty piece or a lone byte that is
/// neither printable nor whitespace (raw byte tokens of broken UTF-8 and control codes).
fn safePiece(piece: []const u8) []const u8 {
    if (piece.len == 1) {
        const b = piece[0];
        if (!((b >= 0x20 and b <= 0x7E) or b == '\t' or b == '\n' or b == 0x0B or b == 0x0C or b == '\r')) return "";
    }
    return piece;
}

// ----------------------------------------------------------------------------
// The Sampler, which takes logits and returns a sampled token

const ProbIndex = struct { prob: f32, index: u32 }; // struct used when sorting probabilities during top-p sampling

const Sampler = struct {
    temperature: f32,
    topp: f64,
    rng_state: u64,
    probindex: []ProbIndex, // buffer used in top-p sampling (vocab_size)
};

fn buildSampler(gpa: Allocator, vocab_size: usize, temperature: f64, topp: f64, seed: u64) Sampler {
    return .{ .temperature = @floatCast(temperature), .topp = topp, .rng_state = seed, .probindex = allocOrDie(gpa, ProbIndex, vocab_size) };
}

fn freeSampler(gpa: Allocator, s: *Sampler) void {
    gpa.free(s.probindex);
}

/// xorshift rng: https://en.wikipedia.org/wiki/Xorshift#xorshift.2A
fn randomU32(state: *u64) u32 {
    state.* ^= state.* >> 12;
    state.* ^= state.* << 25;
    state.* ^= state.* >> 27;
    return @intCast((state.* *% 0x2545F4914F6CDD1D) >> 32);
}

/// random float32 in [0, 1)
fn randomF32(state: *u64) f32 {
    return @as(f32, @floatFromInt(randomU32(state) >> 8)) / 16777216.0;
}

/// index of the largest probability; the first one among equals
fn sampleArgmax(probs: []const f32) usize {
    var max_i: usize = 0;
    for (probs, 0..) |p, i| {
        if (p > probs[max_i]) max_i = i;
    }
    return max_i;
}

/// sample index from probabilities (they must sum to 1!); coin is a random number in [0, 1)
fn sampleMult(probs: []const f32, coin: f32) usize {
    var cdf: f32 = 0;
    for (probs, 0..) |p, i| {
        cdf += p;
        if (coin < cdf) return i;
    }
    return probs.len - 1; // in case of rounding errors
}

fn probDescending(_: void, a: ProbIndex, b: ProbIndex) bool {
    return a.prob > b.prob or (a.prob == b.prob and a.index < b.index);
}

/// top-p sampling (or "nucleus sampling") samples from the smallest set of tokens that exceed
/// probability topp. This way we never sample tokens that have very low probabilities and are
/// less likely to go "off the rails".
fn sampleTopp(probs: []const f32, topp: f32, probindex: []ProbIndex, coin: f32) usize {
    if (probs.len == 1) return 0;
    // values smaller than (1 - topp) / (n - 1) cannot be part of the result, so for efficiency
    // we crop these out as candidates before sorting
    const cutoff = (1.0 - topp) / @as(f32, @floatFromInt(probs.len - 1));
    var n0: usize = 0;
    for (probs, 0..) |p, i| {
        if (p >= cutoff) {
            probindex[n0] = .{ .prob = p, .index = @intCast(i) };
            n0 += 1;
        }
    }
    if (n0 == 0) return probs.len - 1; // only NaN probabilities
    const cand = probindex[0..n0];
    std.mem.sort(ProbIndex, cand, {}, probDescending);

    // truncate the list where cumulative probability exceeds topp
    var cumulative: f32 = 0;
    var last = n0 - 1; // in case of rounding errors consider all elements
    for (cand, 0..) |c, i| {
        cumulative += c.prob;
        if (cumulative > topp) {
            last = i;
            break; // we've exceeded topp by including last
        }
    }

    // sample from the truncated list
    const r = coin * cumulative;
    var cdf: f32 = 0;
    for (cand[0 .. last + 1]) |c| {
        cdf += c.prob;
        if (r < cdf) return c.index;
    }
    return cand[last].index; // in case of rounding errors
}

/// numpy's pairwise summation (the reference's `e.sum()`), reproduced operation for operation.
/// Over a near-flat distribution of 32000 tokens a plain running sum drifts by ~1e-5, enough to
/// move the coin across a token boundary; summing the same way keeps sampling in step with the
/// reference on synthetic models too.
fn pairwiseSum(a: []const f32) f32 {
    if (a.len < 8) {
        var res: f32 = 0;
        for (a) |v| res += v;
        return res;
    } else if (a.len <= 128) {
        var r: [8]f32 = a[0..8].*;
        var i: usize = 8;
        while (i < a.len - a.len % 8) : (i += 8) {
            for (&r, a[i..][0..8]) |*ri, v| ri.* += v;
        }
        var res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while (i < a.len) : (i += 1) res += a[i];
        return res;
    }
    var n2 = a.len / 2; // halve, keeping the first part a multiple of the unroll factor
    n2 -= n2 % 8;
    return pairwiseSum(a[0..n2]) + pairwiseSum(a[n2..]);
}

/// The sampler's softmax: as `softmax`, with the reference's summation order.
fn softmaxProbs(x: []f32) void {
    var max_val = x[0];
    for (x[1..]) |v| max_val = @max(max_val, v);
    for (x) |*v| v.* = @exp(v.* - max_val);
    const sum = pairwiseSum(x);
    for (x) |*v| v.* /= sum;
}

fn sample(s: *Sampler, logits: []f32) usize {
    if (s.temperature == 0) return sampleArgmax(logits); // greedy argmax sampling
    for (logits) |*l| l.* /= s.temperature; // apply the temperature to the logits
    softmaxProbs(logits);
    const coin = randomF32(&s.rng_state); // flip a (float) coin (this is our source of entropy for sampling)
    if (s.topp <= 0 or s.topp >= 1) return sampleMult(logits, coin); // simply sample from the predicted probability distribution
    return sampleTopp(logits, @floatCast(s.topp), s.probindex, coin); // top-p (nucleus) sampling, clamping the least likely tokens to zero
}

// ----------------------------------------------------------------------------
// generation loop and logits mode

const Stats = struct {
    prompt_tokens: usize = 0,
    generated_tokens: usize = 0,
    positions: usize = 0,
    ttft_s: f64 = 0,
    decode_s: f64 = 0,
};

fn seconds(io: Io, since: Io.Timestamp) f64 {
    const ns = since.durationTo(Io.Clock.awake.now(io)).nanoseconds;
    return @as(f64, @floatFromInt(ns)) / 1e9;
}

const Output = struct {
    writer: *Io.Writer,
    fn emit(self: Output, bytes: []const u8) void {
        if (bytes.len == 0) return;
        self.writer.writeAll(bytes) catch runtimeError("cannot write to stdout", .{});
        self.writer.flush() catch runtimeError("cannot write to stdout", .{});
    }
};

fn generate(io: Io, t: *Transformer, pool: *Pool, tok: *const Tokenizer, sampler: *Sampler, prompt_tokens: []const u32, steps: usize, ignore_bos: bool, out: Output) Stats {
    var stats: Stats = .{ .prompt_tokens = prompt_tokens.len };
    const start = Io.Clock.awake.now(io);
    var first: ?Io.Timestamp = null;
    var token = prompt_tokens[0]; // kick off with the first token in the prompt
    var pos: usize = 0;
    while (pos < steps) : (pos += 1) {
        const logits = forward(t, pool, token, pos); // forward the transformer to get logits for the next token
        stats.positions += 1;
        var next: u32 = undefined;
        if (pos < prompt_tokens.len - 1) {
            next = prompt_tokens[pos + 1]; // still processing the input prompt: force the next prompt token
        } else {
            next = @intCast(sample(sampler, logits)); // otherwise sample the next token from the logits
            stats.generated_tokens += 1;
            if (first == null) first = Io.Clock.awake.now(io);
        }
        // data-dependent terminating condition: the BOS (=1) token delimits sequences
        if (next == BOS and !ignore_bos) break;
        out.emit(safePiece(decode(tok, token, next)));
        token = next;
    }
    const end = Io.Clock.awake.now(io);
    if (first) |f| {
        stats.ttft_s = secondsBetween(start, f);
        stats.decode_s = secondsBetween(f, end);
    } else stats.ttft_s = secondsBetween(start, end);
    return stats;
}

fn secondsBetween(a: Io.Timestamp, b: Io.Timestamp) f64 {
    return @as(f64, @floatFromInt(a.durationTo(b).nanoseconds)) / 1e9;
}

/// forward(ids[i], i) for every id, each row of logits written as raw little-endian float32.
fn logitsRun(io: Io, t: *Transformer, pool: *Pool, ids: []const u32, out_path: []const u8) Stats {
    const file = Io.Dir.cwd().createFile(io, out_path, .{}) catch |err| runtimeError("{s}: cannot write: {t}", .{ out_path, err });
    defer file.close(io);
    var buf: [1 << 16]u8 = undefined;
    var fw = file.writer(io, &buf);
    const start = Io.Clock.awake.now(io);
    for (ids, 0..) |id, pos| {
        const logits = forward(t, pool, id, pos);
        fw.interface.writeAll(std.mem.sliceAsBytes(logits)) catch runtimeError("{s}: cannot write", .{out_path});
    }
    const elapsed = seconds(io, start);
    fw.interface.flush() catch runtimeError("{s}: cannot write", .{out_path});
    return .{ .prompt_tokens = ids.len, .positions = ids.len, .ttft_s = elapsed };
}

fn printStats(threads: usize, load_s: f64, st: Stats) void {
    const rate: f64 = if (st.generated_tokens > 1 and st.decode_s > 0) @as(f64, @floatFromInt(st.generated_tokens - 1)) / st.decode_s else 0;
    std.debug.print("polyllama-stats: {{\"port\":\"{s}\",\"prompt_tokens\":{d},\"generated_tokens\":{d},\"positions\":{d},\"threads\":{d}," ++
        "\"load_s\":{d:.6},\"ttft_s\":{d:.6},\"decode_s\":{d:.6},\"decode_tok_s\":{d:.4}}}\n", .{ PORT_NAME, st.prompt_tokens, st.generated_tokens, st.positions, threads, load_s, st.ttft_s, st.decode_s, rate });
}

// ----------------------------------------------------------------------------
// command line

const Mode = enum { generate, logits };

const Args = struct {
    checkpoint: []const u8,
    tokenizer: ?[]const u8 = null,
    temperature: f64 = 1.0,
    topp: f64 = 0.9,
    seed: u64 = 0,
    steps: u64 = 256, // any number of digits: more than seq_len means seq_len
    prompt: []const u8 = "",
    threads: usize = 1,
    mode: Mode = .generate,
    output: ?[]const u8 = null,
    ids: ?[]const i64 = null, // range-checked once the model's vocabulary is known
    ignore_bos: bool = false,
};

/// Plain decimal only (contract section 2): `[+-]?[0-9]+`.
fn isPlainInt(text: []const u8) bool {
    const digits = if (text.len > 0 and (text[0] == '+' or text[0] == '-')) text[1..] else text;
    if (digits.len == 0) return false;
    for (digits) |ch| if (!std.ascii.isDigit(ch)) return false;
    return true;
}

/// Plain decimal only: `[+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)?`, so no inf, nan, hex,
/// underscores or spaces.
fn isPlainFloat(text: []const u8) bool {
    var i: usize = 0;
    if (i < text.len and (text[i] == '+' or text[i] == '-')) i += 1;
    var mantissa_digits: usize = 0;
    while (i < text.len and std.ascii.isDigit(text[i])) : (i += 1) mantissa_digits += 1;
    if (i < text.len and text[i] == '.') {
        i += 1;
        while (i < text.len and std.ascii.isDigit(text[i])) : (i += 1) mantissa_digits += 1;
    }
    if (mantissa_digits == 0) return false;
    if (i < text.len and (text[i] == 'e' or text[i] == 'E')) {
        i += 1;
        if (i < text.len and (text[i] == '+' or text[i] == '-')) i += 1;
        return i < text.len and isPlainInt(text[i..]) and std.ascii.isDigit(text[i]);
    }
    return i == text.len;
}

fn parseFloatArg(flag: []const u8, text: []const u8, lo: f64, hi: f64) f64 {
    if (!isPlainFloat(text)) usageError("{s} expects a number, got '{s}'", .{ flag, text });
    const v = std.fmt.parseFloat(f64, text) catch usageError("{s} expects a number, got '{s}'", .{ flag, text });
    // 1e999 is plain decimal but overflows to infinity: out of range, like any other bound
    if (!std.math.isFinite(v) or v < lo or v > hi) usageError("{s} {s} is out of range", .{ flag, text });
    return v;
}

fn parseIntArg(flag: []const u8, text: []const u8, lo: i128, hi: i128) i128 {
    if (!isPlainInt(text)) usageError("{s} expects an integer, got '{s}'", .{ flag, text });
    return intInRange(text, lo, hi) orelse usageError("{s} {s} is out of range", .{ flag, text });
}

/// A plain-decimal integer in [lo, hi], or null; one too large for i128 is out of range too.
fn intInRange(text: []const u8, lo: i128, hi: i128) ?i128 {
    const v = std.fmt.parseInt(i128, text, 10) catch return null;
    return if (v < lo or v > hi) null else v;
}

fn parseSteps(text: []const u8) u64 {
    if (!isPlainInt(text)) usageError("-n expects an integer, got '{s}'", .{text});
    return stepsValue(text) orelse usageError("-n {s} is out of range", .{text});
}

/// -n is an integer >= 0 of any number of digits; values past u64 saturate, since everything
/// above seq_len means seq_len anyway. Null for a negative value.
fn stepsValue(plain_int: []const u8) ?u64 {
    if (plain_int[0] == '-') return if (std.mem.trimStart(u8, plain_int[1..], "0").len == 0) 0 else null;
    return std.fmt.parseInt(u64, plain_int, 10) catch std.math.maxInt(u64); // digits only: just overflow
}

fn parseIds(gpa: Allocator, text: []const u8) []const i64 {
    const ids = allocOrDie(gpa, i64, std.mem.countScalar(u8, text, ',') + 1);
    var it = std.mem.splitScalar(u8, text, ',');
    var n: usize = 0;
    while (it.next()) |part| : (n += 1) {
        if (!isPlainInt(part)) usageError("-k expects comma-separated token ids, got '{s}'", .{text});
        // a valid number too large for i64 is no valid id either: the range check refuses it
        ids[n] = std.fmt.parseInt(i64, part, 10) catch -1;
    }
    return ids;
}

fn parseArgs(gpa: Allocator, argv: []const []const u8) Args {
    if (argv.len == 0 or std.mem.startsWith(u8, argv[0], "-")) usageError("missing checkpoint", .{});
    var a: Args = .{ .checkpoint = argv[0] };
    const rest = argv[1..];
    if (rest.len % 2 != 0) usageError("flag {s} has no value", .{rest[rest.len - 1]});
    var i: usize = 0;
    while (i < rest.len) : (i += 2) {
        const flag = rest[i];
        const value = rest[i + 1];
        if (std.mem.eql(u8, flag, "-z")) {
            a.tokenizer = value;
        } else if (std.mem.eql(u8, flag, "-t")) {
            a.temperature = parseFloatArg(flag, value, 0, std.math.floatMax(f64));
        } else if (std.mem.eql(u8, flag, "-p")) {
            a.topp = parseFloatArg(flag, value, 0, 1);
        } else if (std.mem.eql(u8, flag, "-s")) {
            a.seed = @intCast(parseIntArg(flag, value, 0, std.math.maxInt(u64)));
        } else if (std.mem.eql(u8, flag, "-n")) {
            a.steps = parseSteps(value);
        } else if (std.mem.eql(u8, flag, "-i")) {
            a.prompt = value;
        } else if (std.mem.eql(u8, flag, "-j")) {
            a.threads = @intCast(parseIntArg(flag, value, 1, 4096));
        } else if (std.mem.eql(u8, flag, "-m")) {
            a.mode = std.meta.stringToEnum(Mode, value) orelse usageError("-m expects generate or logits, got '{s}'", .{value});
        } else if (std.mem.eql(u8, flag, "-o")) {
            a.output = value;
        } else if (std.mem.eql(u8, flag, "-k")) {
            a.ids = parseIds(gpa, value);
        } else if (std.mem.eql(u8, flag, "-e")) {
            a.ignore_bos = parseIntArg(flag, value, 0, 1) == 1;
        } else usageError("unknown flag {s}", .{flag});
    }
    if (a.mode == .logits and (a.output == null or a.ids == null)) usageError("logits mode needs -o FILE and -k IDS", .{});
    return a;
}

pub fn main(init: std.process.Init) void {
    const io = init.io;
    const t0 = Io.Clock.awake.now(io);
    const gpa = init.arena.allocator(); // everything lives until exit
    const argv = init.minimal.args.toSlice(gpa) catch outOfMemory();
    const args = parseArgs(gpa, argv[@min(1, argv.len)..]);

    // build the Transformer via the model file; GGUF brings its own tokenizer.
    // POLYLLAMA_HUGEPAGES=0 keeps the plain file mapping, for before/after runs.
    const huge_pages = !std.mem.eql(u8, init.environ_map.get("POLYLLAMA_HUGEPAGES") orelse "", "0");
    q8_prefetch = !std.mem.eql(u8, init.environ_map.get("POLYLLAMA_Q8_PREFETCH") orelse "", "0");
    var transformer = buildTransformer(gpa, io, args.checkpoint, args.threads, huge_pages);
    const c = transformer.config;
    const vocab = transformer.vocab orelse blk: {
        const tok_path = args.tokenizer orelse usageError("-z tokenizer is required for a .bin checkpoint", .{});
        var diag: model.Diag = .{};
        break :blk checkpoint.readTokenizer(gpa, io, &diag, tok_path, c.vocab_size) catch |err| readFailed(err, &diag);
    };
    var tokenizer = buildTokenizer(gpa, vocab);
    const pool = buildPool(gpa, io, args.threads);
    const load_s = seconds(io, t0);

    var stats: Stats = undefined;
    switch (args.mode) {
        .logits => {
            const raw = args.ids.?;
            if (raw.len < 1 or raw.len > c.seq_len) usageError("-k needs 1..{d} ids in [0, {d})", .{ c.seq_len, c.vocab_size });
            const ids = allocOrDie(gpa, u32, raw.len);
            for (raw, ids) |r, *id| {
                if (r < 0 or r >= c.vocab_size) usageError("-k needs 1..{d} ids in [0, {d})", .{ c.seq_len, c.vocab_size });
                id.* = @intCast(r);
            }
            stats = logitsRun(io, &transformer, pool, ids, args.output.?);
        },
        .generate => {
            const seed = if (args.seed > 0) args.seed else @as(u64, @intCast(@max(1, Io.Clock.real.now(io).toSeconds())));
            var sampler = buildSampler(gpa, c.vocab_size, args.temperature, args.topp, seed);
            const steps: usize = if (args.steps == 0 or args.steps > c.seq_len) c.seq_len else @intCast(args.steps);
            const prompt_tokens = encode(&tokenizer, gpa, args.prompt, true, false) catch |err| switch (err) {
                error.OutOfMemory => outOfMemory(),
                error.ByteTokenMissing => badFile(args.tokenizer orelse args.checkpoint, "the vocabulary of {d} pieces cannot spell the prompt (no byte or space token)", .{c.vocab_size}),
            };
            var out_buf: [4096]u8 = undefined;
            var stdout = Io.File.stdout().writerStreaming(io, &out_buf);
            const out: Output = .{ .writer = &stdout.interface };
            stats = generate(io, &transformer, pool, &tokenizer, &sampler, prompt_tokens, steps, args.ignore_bos, out);
            out.emit("\n");
            freeSampler(gpa, &sampler);
        },
    }
    printStats(args.threads, load_s, stats);
    freePool(gpa, pool);
    freeTokenizer(gpa, &tokenizer);
    freeTransformer(gpa, &transformer);
}

// ----------------------------------------------------------------------------
// tests (`zig build test`): tokenizer vectors, xorshift draws, argmax, top-p

const testing = std.testing;

/// tokenizer.bin etc. from $POLYLLAMA_MODEL_PATH (':'-separated directories). Missing files
/// fail the test under CI=true and skip it elsewhere.
fn findModelFile(name: []const u8) ![]const u8 {
    const dirs = testing.environ.getPosix("POLYLLAMA_MODEL_PATH") orelse "";
    var it = std.mem.splitScalar(u8, dirs, ':');
    while (it.next()) |dir| {
        if (dir.len == 0) continue;
        const path = try std.fs.path.join(testing.allocator, &.{ dir, name });
        if (Io.Dir.cwd().access(testing.io, path, .{})) |_| return path else |_| testing.allocator.free(path);
    }
    const ci = testing.environ.getPosix("CI") orelse "";
    if (std.mem.eql(u8, ci, "true")) {
        std.debug.print("{s} not found in POLYLLAMA_MODEL_PATH\n", .{name});
        return error.ModelFileMissing;
    }
    return error.SkipZigTest;
}

fn expectEncode(tok: *const Tokenizer, text: []const u8, expected: []const u32) !void {
    const ids = try encode(tok, testing.allocator, text, true, false);
    defer testing.allocator.free(ids);
    try testing.expectEqualSlices(u32, expected, ids);
}

test "tokenizer.bin: encode vectors and decode rules" {
    const path = try findModelFile("tokenizer.bin");
    defer testing.allocator.free(path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    var diag: model.Diag = .{};
    var tok = buildTokenizer(arena.allocator(), try checkpoint.readTokenizer(arena.allocator(), testing.io, &diag, path, 32000));
    try expectEncode(&tok, "I believe the meaning of life is", &.{ 1, 306, 4658, 278, 6593, 310, 2834, 338 });
    try expectEncode(&tok, "Once upon a time", &.{ 1, 9038, 2501, 263, 931 });
    try expectEncode(&tok, "", &.{1});
    // decode: the space after BOS is dropped, <0x0A> is a newline byte
    try testing.expectEqualStrings("Once", decode(&tok, BOS, 9038));
    try testing.expectEqualStrings(" upon", decode(&tok, 9038, 2501));
    try testing.expectEqualStrings("\n", decode(&tok, 5, 13));
    // byte fallback of a code point that is not a piece, and its bytes decoding back
    const ids = try encode(&tok, testing.allocator, "\u{1F600}", true, false);
    defer testing.allocator.free(ids);
    var text: std.ArrayList(u8) = .empty;
    defer text.deinit(testing.allocator);
    for (ids[1..], 0..) |id, i| try text.appendSlice(testing.allocator, decode(&tok, ids[i], id));
    try testing.expectEqualStrings("\u{1F600}", text.items); // the dummy space is dropped after BOS
}

test "safe_printf rules" {
    try testing.expectEqualStrings("", safePiece(""));
    try testing.expectEqualStrings("", safePiece("\x01"));
    try testing.expectEqualStrings("", safePiece("\xe2"));
    try testing.expectEqualStrings("\n", safePiece("\n"));
    try testing.expectEqualStrings("a", safePiece("a"));
    try testing.expectEqualStrings("\xe2\x96", safePiece("\xe2\x96"));
}

test "xorshift draws for a seed" {
    var s: u64 = 42;
    for ([_]u32{ 1456360119, 3359763283, 3393612768, 4054632243, 3283045847 }) |want| try testing.expectEqual(want, randomU32(&s));
    s = 42;
    try testing.expectEqual(@as(f32, 0.3390852212905884), randomF32(&s));
    try testing.expectEqual(@as(f32, 0.7822558283805847), randomF32(&s));
}

test "argmax takes the first maximum" {
    try testing.expectEqual(@as(usize, 1), sampleArgmax(&.{ 1.0, 3.0, 0.5, 3.0, 2.0 }));
    try testing.expectEqual(@as(usize, 0), sampleArgmax(&.{ 7.0, 7.0 }));
}

test "multinomial and top-p sampling" {
    const probs = [_]f32{ 0.1, 0.3, 0.05, 0.3, 0.25 };
    var buf: [5]ProbIndex = undefined;
    // (coin, top-p 0.7 pick, full-distribution pick), from the reference sampler
    const cases = [_]struct { f32, usize, usize }{ .{ 0.0, 1, 0 }, .{ 0.2, 1, 1 }, .{ 0.5, 3, 3 }, .{ 0.7, 3, 3 }, .{ 0.9, 4, 4 }, .{ 0.99, 4, 4 } };
    for (cases) |cs| {
        try testing.expectEqual(cs[1], sampleTopp(&probs, 0.7, &buf, cs[0]));
        try testing.expectEqual(cs[2], sampleMult(&probs, cs[0]));
    }
    // whole sampler: temperature 0.8, top-p 0.9, seeded draws as the reference gives them
    const logits = [_]f32{ 1.0, 3.0, 0.5, 3.0, 2.0 };
    const want = [_][8]usize{ .{ 1, 3, 3, 1, 1, 3, 3, 3 }, .{ 3, 1, 3, 4, 3, 3, 1, 1 } };
    for ([_]u64{ 1, 3 }, want) |seed, w| {
        var sampler: Sampler = .{ .temperature = 0.8, .topp = 0.9, .rng_state = seed, .probindex = &buf };
        for (w) |expected| {
            var l = logits;
            try testing.expectEqual(expected, sample(&sampler, &l));
        }
    }
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

/// Scalar Q8_0 matmul, the contract's formula block by block in row order: the SIMD kernel sums
/// each row's blocks in the same order, so it must match bit for bit.
fn matmulQ8Scalar(out: []f32, w: []const Q8Block, qx: []const i8, dx: []const f32) void {
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
        matmulRows(&got, .{ .q8_0 = &w }, .{ .x = &x, .qx = &qx, .dx = &dx }, 0, rows);
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
    matmulRows(&got, .{ .q8_0 = &w }, in, 0, rows);
    try testing.expectEqualSlices(f32, &want, &got);
    // and starting off a multiple of 4, as a chunk of rows may
    @memset(&got, 0);
    matmulRows(&got, .{ .q8_0 = &w }, in, 1, rows);
    try testing.expectEqualSlices(f32, want[1..], got[1..]);
    // an unaligned start, as blocks in a file have: the same bytes one further
    var bytes: [rows * nb * 34 + 1]u8 = undefined;
    @memcpy(bytes[1..], std.mem.sliceAsBytes(&w));
    matmulRows(&got, .{ .q8_0 = model.q8BlocksAt(&bytes, 1, rows * nb) }, in, 0, rows);
    try testing.expectEqualSlices(f32, &want, &got);
    var row: [nb * QB]f32 = undefined;
    dequantizeRow(&row, w[nb..][0..nb]);
    for (row, 0..) |v, i| try testing.expectEqual(w[nb + i / QB].scale() * @as(f32, @floatFromInt(w[nb + i / QB].qs[i % QB])), v);
}

/// llama.cpp's quantize_row_q8_0_ref, which the converter uses: d = amax / 127, q = round(x / d)
/// with ties away from zero (C's roundf, Zig's @round), d stored as fp16.
fn quantizeWeightsForTest(gpa: Allocator, m: Matrix, cols: usize) !Matrix {
    if (cols % QB != 0) return m; // rows not a multiple of 32 long stay F32, as in the converter
    const x = m.f32;
    const blocks = try gpa.alloc(Q8Block, x.len / QB);
    for (blocks, 0..) |*blk, b| {
        const v = x[b * QB ..][0..QB];
        var amax: f32 = 0;
        for (v) |e| amax = @max(amax, @abs(e));
        const d = amax / 127.0;
        const id: f32 = if (d != 0) 1.0 / d else 0;
        for (&blk.qs, v) |*q, e| q.* = @intFromFloat(@round(e * id));
        std.mem.writeInt(u16, &blk.d, @bitCast(@as(f16, @floatCast(d))), .little);
    }
    return .{ .q8_0 = blocks };
}

test "Q8_0 stories260K: the converter's blocks, and greedy text as the reference's" {
    const model_path = try findModelFile("stories260K.bin");
    defer testing.allocator.free(model_path);
    const tok_path = try findModelFile("tok512.bin");
    defer testing.allocator.free(tok_path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    var diag: model.Diag = .{};
    const m = try checkpoint.read(gpa, testing.io, &diag, model_path, false);
    defer std.posix.munmap(@alignCast(@constCast(m.file)));
    const c = m.config;
    // quantized here as `invoke models.convert --type q8_0` does; ffn_down (rows of 172) stays F32
    var w = m.weights;
    w.token_embedding = try quantizeWeightsForTest(gpa, w.token_embedding, c.dim);
    w.wcls = w.token_embedding;
    w.layers = try gpa.dupe(model.LayerWeights, w.layers);
    var crc: std.hash.Crc32 = .init();
    crc.update(std.mem.sliceAsBytes(w.token_embedding.q8_0));
    for (w.layers) |*lw| {
        inline for (.{ "wq", "wk", "wv", "wo", "w1", "w3" }) |name| {
            @field(lw, name) = try quantizeWeightsForTest(gpa, @field(lw, name), c.dim);
            crc.update(std.mem.sliceAsBytes(@field(lw, name).q8_0));
        }
        lw.w2 = try quantizeWeightsForTest(gpa, lw.w2, c.hidden_dim);
        try testing.expect(lw.w2 == .f32);
    }
    // zlib.crc32 of the same tensors' bytes in the converter's stories260K Q8_0 GGUF
    try testing.expectEqual(@as(u32, 0xdbb3b24c), crc.final());

    const vocab = try checkpoint.readTokenizer(gpa, testing.io, &diag, tok_path, c.vocab_size);
    const tok = buildTokenizer(gpa, vocab);
    const prompt = try encode(&tok, gpa, "Once upon a time, there was a", true, false);
    // impls/python/run.py on that GGUF, -t 0 -n 96 -i "Once upon a time, there was a"
    const want = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " ++
        "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n" ++
        "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't";
    for ([_]usize{ 1, 2 }) |n_workers| {
        var t: Transformer = .{ .config = c, .weights = w, .state = buildRunState(gpa, c, n_workers * CHUNKS_PER_WORKER), .file = m.file, .vocab = null };
        const pool = buildPool(gpa, testing.io, n_workers);
        defer freePool(gpa, pool);
        var sampler = buildSampler(gpa, c.vocab_size, 0, 0.9, 1);
        var buf: [1024]u8 = undefined;
        var writer: Io.Writer = .fixed(&buf);
        _ = generate(testing.io, &t, pool, &tok, &sampler, prompt, 96, false, .{ .writer = &writer });
        try testing.expectEqualStrings(want, writer.buffered());
    }
}

test "pairwise sum follows numpy's order" {
    var x: [300]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = 1.0 / @as(f32, @floatFromInt(i + 1));
    // numpy: np.sum(1 / np.arange(1, 301, dtype=np.float32), dtype=np.float32)
    try testing.expectEqual(@as(f32, 6.282664775848389), pairwiseSum(&x));
}

test "number flags are plain decimal" {
    for ([_][]const u8{ "0", "1.5", "+2", "-0.5", ".5", "5.", "1e5", "2.5E-3", "007" }) |t| try testing.expect(isPlainFloat(t));
    for ([_][]const u8{ "", "inf", "nan", "1_0", " 1", "1 ", "0x10", "e5", ".", "1e", "1e+", "+", "1.2.3" }) |t| try testing.expect(!isPlainFloat(t));
    for ([_][]const u8{ "0", "+7", "-3", "0012" }) |t| try testing.expect(isPlainInt(t));
    for ([_][]const u8{ "", "+", "1.0", "1_0", " 1", "1e3", "x" }) |t| try testing.expect(!isPlainInt(t));
}

test "-n takes any number of digits; -j is in [1, 4096]; -s in [0, 2^64 - 1]" {
    try testing.expectEqual(@as(?u64, 1099511627776), stepsValue("1099511627776"));
    try testing.expectEqual(@as(?u64, std.math.maxInt(u64)), stepsValue("99999999999999999999999999"));
    try testing.expectEqual(@as(?u64, 7), stepsValue("+7"));
    try testing.expectEqual(@as(?u64, 0), stepsValue("-00"));
    try testing.expectEqual(@as(?u64, null), stepsValue("-3"));
    try testing.expectEqual(@as(?i128, 4096), intInRange("4096", 1, 4096));
    try testing.expectEqual(@as(?i128, null), intInRange("4097", 1, 4096));
    try testing.expectEqual(@as(?i128, null), intInRange("0", 1, 4096));
    try testing.expectEqual(@as(?i128, std.math.maxInt(u64)), intInRange("18446744073709551615", 0, std.math.maxInt(u64)));
    try testing.expectEqual(@as(?i128, null), intInRange("18446744073709551616", 0, std.math.maxInt(u64)));
    try testing.expectEqual(@as(?i128, null), intInRange("999999999999999999999999999999999999999999999999999999999999", 0, std.math.maxInt(u64)));
}

test {
    // the readers' own tests
    _ = checkpoint;
    _ = @import("gguf.zig");
}
