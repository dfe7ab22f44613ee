//! The batched forward pass (docs/port-contract.md, section 6, "The batched forward pass"):
//! `forwardBatch` runs T prompt positions at once, row t being forward(tokens[t], p0 + t). Each
//! weight matrix is one matrix-matrix product per batch (gemm.zig, gemm_q8.zig), split across
//! the pool once by blocks of weight rows; the attention is split by (row, head) pairs. The
//! one-position path (forward.zig) is untouched; both share the KV cache.

const std = @import("std");
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const errors = @import("errors.zig");
const kernels = @import("kernels.zig");
const gemm = @import("gemm.zig");
const gemm_q8 = @import("gemm_q8.zig");
const q8 = @import("q8.zig");
const pool_mod = @import("pool.zig");
const forward_mod = @import("forward.zig");
const Config = model.Config;
const Matrix = model.Matrix;
const Pool = pool_mod.Pool;
const Transformer = forward_mod.Transformer;
const share = pool_mod.share;
const QB = q8.QB;
const outOfMemory = errors.outOfMemory;
const rmsnorm = kernels.rmsnorm;
const softmax = kernels.softmax;
const dot = kernels.dot;

/// The activations of up to `rows` positions, sized once at load for min(batch, seq_len) rows.
pub const BatchState = struct {
    rows: usize,
    x: []f32, // residual stream (rows, dim)
    xb: []f32, // rmsnorm output, then the attention's output (rows, dim)
    xb2: []f32, // a product's output before the residual add (rows, dim)
    q: []f32, // queries (rows, dim)
    hb: []f32, // silu(w1 @ x) * (w3 @ x) (rows, hidden_dim)
    hb2: []f32, // w3 @ x (rows, hidden_dim)
    pack: []f32, // the fp32 input of a product, in gemm.zig's panels (panels(rows) * VL, widest)
    qx: []i8, // the input of a Q8_0 product, quantized row by row (gemm_q8.zig's layout)
    dx: []f32, // its blocks' scales
    wsum: []i32, // per chunk: the Q8_0 kernel's weight block sums (n_chunks, TILE_R * widest / 32)
    att: []f32, // one row of scores per chunk of the attention job (n_chunks, seq_len)
    rope_cos: []f32, // (rows, dim / 2)
    rope_sin: []f32, // (rows, dim / 2)
    logits: []f32, // (logit_rows, vocab_size)
};

fn alloc(gpa: Allocator, comptime T: type, a: usize, b: usize) []T {
    const n = std.math.mul(usize, a, b) catch outOfMemory();
    return gpa.alloc(T, n) catch outOfMemory();
}

/// `rows` is min(batch, seq_len); `logit_rows` the rows whose logits a batch keeps (1 when only
/// the last one's are needed); `n_chunks` the pool's chunks per job.
pub fn buildBatchState(gpa: Allocator, c: Config, rows: usize, logit_rows: usize, n_chunks: usize) BatchState {
    const widest = @max(c.dim, c.hidden_dim);
    return .{
        .rows = rows,
        .x = alloc(gpa, f32, rows, c.dim),
        .xb = alloc(gpa, f32, rows, c.dim),
        .xb2 = alloc(gpa, f32, rows, c.dim),
        .q = alloc(gpa, f32, rows, c.dim),
        .hb = alloc(gpa, f32, rows, c.hidden_dim),
        .hb2 = alloc(gpa, f32, rows, c.hidden_dim),
        .pack = alloc(gpa, f32, gemm.panels(rows) * gemm.VL, widest),
        .qx = alloc(gpa, i8, gemm_q8.packedRows(rows), widest),
        .dx = alloc(gpa, f32, gemm_q8.packedRows(rows), widest / QB),
        .wsum = alloc(gpa, i32, n_chunks, gemm_q8.TILE_R * (widest / QB)),
        .att = alloc(gpa, f32, n_chunks, c.seq_len),
        .rope_cos = alloc(gpa, f32, rows, c.dim / 2),
        .rope_sin = alloc(gpa, f32, rows, c.dim / 2),
        .logits = alloc(gpa, f32, logit_rows, c.vocab_size),
    };
}

pub fn freeBatchState(gpa: Allocator, s: *BatchState) void {
    inline for (@typeInfo(BatchState).@"struct".field_names) |name| {
        if (comptime !std.mem.eql(u8, name, "rows")) gpa.free(@field(s, name));
    }
}

/// A product's input: `rows` rows of width `d` in `x`, packed for fp32 weights and quantized
/// for Q8_0 ones, once for the group of products that share it.
const Input = struct {
    x: []const f32,
    rows: usize,
    d: usize,
    packed_f32: gemm.Packed = undefined,
    packed_q8: gemm_q8.Packed = undefined,
    wsum: []i32 = &.{},
};

fn prepare(s: *BatchState, x: []const f32, rows: usize, d: usize, ws: []const Matrix) Input {
    var in: Input = .{ .x = x, .rows = rows, .d = d };
    var f32_seen = false;
    var q8_seen = false;
    for (ws) |w| switch (w) {
        .f32 => f32_seen = true,
        .q8_0 => q8_seen = true,
    };
    if (f32_seen and rows > 1) {
        gemm.packF32(s.pack, x, rows, d);
        in.packed_f32 = .{ .pack = s.pack, .rows = rows, .d = d };
    }
    if (q8_seen) {
        in.packed_q8 = gemm_q8.quantizeRows(s.qx, s.dx, x, rows, d);
        in.wsum = s.wsum;
    }
    return in;
}

/// out[t * ldo + r] for every row t and weight rows r in [r0, r1). A single row takes the
/// one-position kernels, which stream the weights at memory speed.
fn productRows(out: []f32, ldo: usize, w: Matrix, in: Input, r0: usize, r1: usize, chunk: usize) void {
    switch (w) {
        .f32 => |t| if (in.rows == 1)
            kernels.matmulRowsF32(out, t, in.x[0..in.d], r0, r1)
        else
            gemm.gemmRowsF32(out, ldo, t, in.packed_f32, r0, r1),
        .q8_0 => |q| {
            const per = gemm_q8.TILE_R * (in.d / QB);
            gemm_q8.gemmRowsQ8(out, ldo, q, in.packed_q8, r0, r1, in.wsum[chunk * per ..][0..per]);
        },
    }
}

/// Up to three products sharing one input (q, k and v), their weight rows stacked and split
/// into chunks once.
const GemmJob = struct {
    in: Input,
    outs: [3][]f32,
    ldos: [3]usize,
    ns: [3]usize, // weight rows of each
    ws: [3]Matrix,
    count: usize,

    fn work(job: *const GemmJob, chunk: usize, n_chunks: usize) void {
        var total: usize = 0;
        for (job.ns[0..job.count]) |n| total += n;
        const r = share(total, chunk, n_chunks);
        var base: usize = 0;
        for (0..job.count) |i| {
            const n = job.ns[i];
            const lo = @max(r[0], base);
            const hi = @min(r[1], base + n);
            if (lo < hi) productRows(job.outs[i], job.ldos[i], job.ws[i], job.in, lo - base, hi - base, chunk);
            base += n;
        }
    }
};

fn product(pool: *Pool, s: *BatchState, out: []f32, ldo: usize, w: Matrix, n: usize, x: []const f32, rows: usize, d: usize) void {
    const none: Matrix = .{ .f32 = &.{} };
    const job: GemmJob = .{ .in = prepare(s, x, rows, d, &.{w}), .outs = .{ out, &.{}, &.{} }, .ldos = .{ ldo, 0, 0 }, .ns = .{ n, 0, 0 }, .ws = .{ w, none, none }, .count = 1 };
    pool.run(&job, GemmJob.work);
}

/// hb = silu(xb @ w1^T) * (xb @ w3^T), each chunk a block of hidden rows for every position.
const FfnJob = struct {
    in: Input,
    hb: []f32,
    hb2: []f32,
    hidden: usize,
    w1: Matrix,
    w3: Matrix,

    fn work(job: *const FfnJob, chunk: usize, n_chunks: usize) void {
        const r = share(job.hidden, chunk, n_chunks);
        if (r[0] == r[1]) return;
        productRows(job.hb, job.hidden, job.w1, job.in, r[0], r[1], chunk);
        productRows(job.hb2, job.hidden, job.w3, job.in, r[0], r[1], chunk);
        for (0..job.in.rows) |t| {
            const g = job.hb[t * job.hidden ..][r[0]..r[1]];
            const u = job.hb2[t * job.hidden ..][r[0]..r[1]];
            for (g, u) |*gi, ui| gi.* = gi.* / (1.0 + @exp(-gi.*)) * ui; // silu(x) = x * sigmoid(x)
        }
    }
};

/// Causal attention of rows [0, T) at positions p0 + t, one (row, head) pair at a time. Pairs
/// are dealt to chunks round-robin: a row's cost grows with its position, so contiguous ranges
/// would leave the last chunk the most work.
const AttentionJob = struct {
    c: Config,
    s: *const BatchState,
    key_cache: []const f32,
    value_cache: []const f32,
    layer: usize,
    p0: usize,
    rows: usize,

    fn work(job: *const AttentionJob, chunk: usize, n_chunks: usize) void {
        const c = job.c;
        const s = job.s;
        const hs = c.headSize();
        const kv_dim = c.kvDim();
        const kv_mul = c.n_heads / c.n_kv_heads;
        const loff = job.layer * c.seq_len * kv_dim;
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(hs)));
        var i = chunk;
        while (i < job.rows * c.n_heads) : (i += n_chunks) {
            const t = i / c.n_heads;
            const h = i % c.n_heads;
            const pos = job.p0 + t;
            const att = s.att[chunk * c.seq_len ..][0 .. pos + 1];
            const q = s.q[t * c.dim + h * hs ..][0..hs];
            const kvo = loff + (h / kv_mul) * hs;
            for (att, 0..) |*a, p| a.* = dot(q, job.key_cache[kvo + p * kv_dim ..][0..hs]) * scale;
            softmax(att);
            const xb = s.xb[t * c.dim + h * hs ..][0..hs];
            @memset(xb, 0);
            for (att, 0..) |a, p| {
                const v = job.value_cache[kvo + p * kv_dim ..][0..hs];
                for (xb, v) |*o, vi| o.* += a * vi;
            }
        }
    }
};

pub const Logits = enum { none, last, all };

/// Runs tokens[t] at position p0 + t for every t (at most s.rows of them), leaving their k and
/// v in the cache. Returns the logits asked for: none, the last row's, or every row's
/// (rows x vocab_size, row-major).
pub fn forwardBatch(tr: *Transformer, s: *BatchState, pool: *Pool, tokens: []const u32, p0: usize, want: Logits) []f32 {
    const c = tr.config;
    const w = &tr.weights;
    const kc = tr.state.key_cache;
    const vc = tr.state.value_cache;
    const dim = c.dim;
    const hidden = c.hidden_dim;
    const kv_dim = c.kvDim();
    const half = dim / 2;
    const T = tokens.len;
    std.debug.assert(T >= 1 and T <= s.rows and p0 + T <= c.seq_len);

    for (tokens, 0..) |token, t| {
        const row = s.x[t * dim ..][0..dim];
        switch (w.token_embedding) {
            .f32 => |e| @memcpy(row, e[token * dim ..][0..dim]),
            .q8_0 => |qe| q8.dequantizeRow(row, qe[token * (dim / QB) ..][0 .. dim / QB]),
        }
        forward_mod.ropeAt(s.rope_cos[t * half ..][0..half], s.rope_sin[t * half ..][0..half], c, p0 + t);
    }

    for (w.layers, 0..) |*lw, l| {
        // attention: every row's q, k, v, with k and v written into the cache rows p0..p0+T-1
        for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], lw.rms_att);
        const loff = l * c.seq_len * kv_dim;
        const k = kc[loff + p0 * kv_dim ..][0 .. T * kv_dim];
        const v = vc[loff + p0 * kv_dim ..][0 .. T * kv_dim];
        const qkv: GemmJob = .{
            .in = prepare(s, s.xb[0 .. T * dim], T, dim, &.{ lw.wq, lw.wk, lw.wv }),
            .outs = .{ s.q, k, v },
            .ldos = .{ dim, kv_dim, kv_dim },
            .ns = .{ dim, kv_dim, kv_dim },
            .ws = .{ lw.wq, lw.wk, lw.wv },
            .count = 3,
        };
        pool.run(&qkv, GemmJob.work);
        for (0..T) |t| {
            const cos = s.rope_cos[t * half ..][0..half];
            const sin = s.rope_sin[t * half ..][0..half];
            forward_mod.rotateBy(s.q[t * dim ..][0..dim], cos, sin);
            forward_mod.rotateBy(k[t * kv_dim ..][0..kv_dim], cos, sin);
        }
        // every row's k and v are in the cache before any row attends
        const att: AttentionJob = .{ .c = c, .s = s, .key_cache = kc, .value_cache = vc, .layer = l, .p0 = p0, .rows = T };
        pool.run(&att, AttentionJob.work);
        product(pool, s, s.xb2, dim, lw.wo, dim, s.xb[0 .. T * dim], T, dim);
        for (s.x[0 .. T * dim], s.xb2[0 .. T * dim]) |*xi, o| xi.* += o;

        // feed-forward
        for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], lw.rms_ffn);
        const ffn: FfnJob = .{ .in = prepare(s, s.xb[0 .. T * dim], T, dim, &.{ lw.w1, lw.w3 }), .hb = s.hb, .hb2 = s.hb2, .hidden = hidden, .w1 = lw.w1, .w3 = lw.w3 };
        pool.run(&ffn, FfnJob.work);
        product(pool, s, s.xb2, dim, lw.w2, dim, s.hb[0 .. T * hidden], T, hidden);
        for (s.x[0 .. T * dim], s.xb2[0 .. T * dim]) |*xi, o| xi.* += o;
    }

    const vocab = c.vocab_size;
    switch (want) {
        .none => return s.logits[0..0],
        .last => {
            const xl = s.xb[0..dim];
            rmsnorm(xl, s.x[(T - 1) * dim ..][0..dim], w.rms_final);
            product(pool, s, s.logits, vocab, w.wcls, vocab, xl, 1, dim);
            return s.logits[0..vocab];
        },
        .all => {
            for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], w.rms_final);
            product(pool, s, s.logits, vocab, w.wcls, vocab, s.xb[0 .. T * dim], T, dim);
            return s.logits[0 .. T * vocab];
        },
    }
}
