//! What a run adds to the model that model.zig describes (the activations of one position and
//! the KV cache), and run.c's forward pass: the matmuls and the attention heads are jobs for the
//! pool, the norms, residual adds and RoPE run on the calling thread between them.

const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const checkpoint = @import("checkpoint.zig");
const errors = @import("errors.zig");
const kernels = @import("kernels.zig");
const q8 = @import("q8.zig");
const half = @import("half.zig");
const pool_mod = @import("pool.zig");
const Config = model.Config;
const Matrix = model.Matrix;
const TransformerWeights = model.TransformerWeights;
const Vocab = model.Vocab;
const Pool = pool_mod.Pool;
const share = pool_mod.share;
const CHUNKS_PER_WORKER = pool_mod.CHUNKS_PER_WORKER;
const Input = q8.Input;
const QB = q8.QB;
const outOfMemory = errors.outOfMemory;
const allocOrDie = errors.allocOrDie;
const readFailed = errors.readFailed;
const dot = kernels.dot;
const rmsnorm = kernels.rmsnorm;
const softmax = kernels.softmax;
const matmulRowsF32 = kernels.matmulRowsF32;
const matmulRowsQ8 = q8.matmulRowsQ8;
const quantizeActivation = q8.quantizeActivation;
const dequantizeRow = q8.dequantizeRow;

/// The activations of one position plus the KV cache of the whole sequence.
pub const RunState = struct {
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
    key_cache: []f32, // (layer, kv_rows, kv_dim)
    value_cache: []f32, // (layer, kv_rows, kv_dim)
    kv_rows: usize, // positions the cache holds: those the run can reach, not the whole context
};

pub const Transformer = struct {
    config: Config,
    weights: TransformerWeights,
    state: RunState,
    file: []const u8, // the checkpoint's bytes, which the weights point into (munmap frees them)
    vocab: ?Vocab, // GGUF embeds its tokenizer
};

/// `kv_rows` (at most seq_len) is checked against the cache limit by the caller
/// (model.checkKvCache).
pub fn buildRunState(gpa: Allocator, c: Config, n_chunks: usize, kv_rows: usize) RunState {
    std.debug.assert(kv_rows >= 1 and kv_rows <= c.seq_len);
    const kv_len = c.n_layers * kv_rows * c.kvDim();
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
        .kv_rows = kv_rows,
    };
}

pub fn freeRunState(gpa: Allocator, s: *RunState) void {
    inline for (@typeInfo(RunState).@"struct".field_names) |name| {
        if (comptime !std.mem.eql(u8, name, "kv_rows")) gpa.free(@field(s, name));
    }
}

/// The model file read and checked; its run state comes later (initState), once the command
/// line says how many positions the KV cache must hold.
pub fn buildTransformer(gpa: Allocator, io: Io, path: []const u8, huge_pages: bool) Transformer {
    var diag: model.Diag = .{};
    const m = checkpoint.read(gpa, io, &diag, path, huge_pages) catch |err| readFailed(err, &diag);
    return .{ .config = m.config, .weights = m.weights, .state = undefined, .file = m.file, .vocab = m.vocab };
}

/// The run state with a KV cache of `kv_rows` positions, allocated once.
pub fn initState(gpa: Allocator, t: *Transformer, n_workers: usize, kv_rows: usize) void {
    t.state = buildRunState(gpa, t.config, if (n_workers == 1) 1 else n_workers * CHUNKS_PER_WORKER, kv_rows);
}

pub fn freeTransformer(gpa: Allocator, t: *Transformer) void {
    freeRunState(gpa, &t.state);
    gpa.free(t.weights.layers);
    if (t.file.len > 0) std.posix.munmap(@alignCast(@constCast(t.file)));
}

fn matmulRows(out: []f32, w: Matrix, in: Input, r0: usize, r1: usize) void {
    switch (w) {
        .f32 => |t| matmulRowsF32(out, t, in.x, r0, r1),
        .q8_0 => |q| matmulRowsQ8(out, q, in, r0, r1),
        .f16 => |h| half.matmulRows16(.f16, out, h, in.x, r0, r1),
        .bf16 => |b| half.matmulRows16(.bf16, out, b, in.x, r0, r1),
    }
}

/// `x` as the matmuls with weights `ws` read it: quantized once for all of them if any is
/// Q8_0 (whose rows, and so x, the reader has checked to be a multiple of 32 long). F16 and
/// BF16 weights take x as it is (the contract leaves the activation in float32).
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
        const loff = job.layer * s.kv_rows * kv_dim; // kv cache layer offset for convenience
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

/// cos/sin of RoPE's rotation for each adjacent pair (i, i+1) at `pos`, shared by all layers.
fn ropeTables(s: *RunState, c: Config, pos: usize) void {
    ropeAt(s.rope_cos, s.rope_sin, c, pos);
}

/// cos/sin of RoPE's rotation for each adjacent pair at `pos` (dim / 2 each), with the file's
/// base theta.
pub fn ropeAt(cos: []f32, sin: []f32, c: Config, pos: usize) void {
    const hs: f32 = @floatFromInt(c.headSize());
    const p: f32 = @floatFromInt(pos);
    const theta: f64 = c.rope_theta;
    for (cos, sin, 0..) |*co, *si, pair| {
        const head_dim: f32 = @floatFromInt((pair * 2) % c.headSize());
        const freq: f32 = 1.0 / @as(f32, @floatCast(std.math.pow(f64, theta, head_dim / hs)));
        const angle: f64 = p * freq; // rounded to f32 like run.c, then cos/sin computed exactly
        co.* = @floatCast(@cos(angle));
        si.* = @floatCast(@sin(angle));
    }
}

fn rotate(v: []f32, s: *const RunState) void {
    rotateBy(v, s.rope_cos, s.rope_sin);
}

/// RoPE: each adjacent pair of v rotated by the angle whose cos and sin ropeAt gave.
pub inline fn rotateBy(v: []f32, cos: []const f32, sin: []const f32) void {
    for (0..v.len / 2) |pair| {
        const v0 = v[2 * pair];
        const v1 = v[2 * pair + 1];
        const fcr = cos[pair];
        const fci = sin[pair];
        v[2 * pair] = v0 * fcr - v1 * fci;
        v[2 * pair + 1] = v0 * fci + v1 * fcr;
    }
}

/// The logits of the token after `token` at `pos`, leaving k and v of `pos` in the cache.
pub fn forward(t: *Transformer, pool: *Pool, token: usize, pos: usize) []f32 {
    const c = t.config;
    const w = &t.weights;
    const s = &t.state;
    const dim = c.dim;
    const kv_dim = c.kvDim();

    // copy the token embedding into x
    switch (w.token_embedding) {
        .f32 => |e| @memcpy(s.x, e[token * dim ..][0..dim]),
        .q8_0 => |q| dequantizeRow(s.x, q[token * (dim / QB) ..][0 .. dim / QB]),
        .f16 => |h| half.widenRow(.f16, s.x, h[token * dim ..][0..dim]),
        .bf16 => |b| half.widenRow(.bf16, s.x, b[token * dim ..][0..dim]),
    }
    ropeTables(s, c, pos);

    for (w.layers, 0..) |*lw, l| {
        attentionBlock(pool, s, c, kv_dim, lw, l, pos);
        ffnBlock(pool, s, c, lw);
    }

    // final rmsnorm, then the classifier into the logits
    rmsnorm(s.x, s.x, w.rms_final, c.norm_eps);
    matmul(pool, s, s.logits, w.wcls, s.x);
    return s.logits;
}

/// x += wo @ attention(rmsnorm(x)) for layer `l`, k and v of `pos` written into its cache rows.
/// This and ffnBlock are inline so that forward stays one loop in the machine code, as it was
/// before its steps had names; kv_dim comes in because kvDim() divides.
inline fn attentionBlock(pool: *Pool, s: *RunState, c: Config, kv_dim: usize, lw: *const model.LayerWeights, l: usize, pos: usize) void {
    rmsnorm(s.xb, s.x, lw.rms_att, c.norm_eps);

    // qkv matmuls for this position; k and v go straight into the cache row of pos
    const loff = l * s.kv_rows * kv_dim; // kv cache layer offset for convenience
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
}

/// x += w2 @ (silu(w1 @ rmsnorm(x)) * (w3 @ rmsnorm(x))), the SwiGLU feed-forward of a layer.
inline fn ffnBlock(pool: *Pool, s: *RunState, c: Config, lw: *const model.LayerWeights) void {
    rmsnorm(s.xb, s.x, lw.rms_ffn, c.norm_eps);
    const ffn: FfnJob = .{ .in = matmulInput(s, s.xb, &.{ lw.w1, lw.w3 }), .hb = s.hb, .hb2 = s.hb2, .w1 = lw.w1, .w3 = lw.w3 };
    pool.run(&ffn, FfnJob.work);
    matmul(pool, s, s.xb, lw.w2, s.hb);
    for (s.x, s.xb) |*xi, o| xi.* += o;
}
