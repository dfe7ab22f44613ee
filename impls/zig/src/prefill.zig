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
const h16 = @import("half.zig");
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
    wconv: []f32, // per chunk: a tile of 16-bit weight rows widened (n_chunks, gemm.TILE_R * widest)
    qx: []i8, // the input of a Q8_0 product, quantized row by row (gemm_q8.zig's layout)
    dx: []f32, // its blocks' scales
    wsum: []i32, // per chunk: the Q8_0 kernel's weight block sums (n_chunks, TILE_R * widest / 32)
    att: []f32, // ATT_ROWS rows of scores per chunk of the attention job that has work (at most n_chunks)
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
        .wconv = alloc(gpa, f32, n_chunks, gemm.TILE_R * widest),
        .qx = alloc(gpa, i8, gemm_q8.packedRows(rows), widest),
        .dx = alloc(gpa, f32, gemm_q8.packedRows(rows), widest / QB),
        .wsum = alloc(gpa, i32, n_chunks, gemm_q8.TILE_R * (widest / QB)),
        // only chunks below the number of (row block, head) pairs get one
        .att = alloc(gpa, f32, @min(n_chunks, (rows + ATT_ROWS - 1) / ATT_ROWS * c.n_heads) * ATT_ROWS, c.seq_len),
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

/// A product's input: `rows` rows of width `d` in `x`, packed for fp32, F16 and BF16 weights
/// (all three take the float32 activation) and quantized for Q8_0 ones, once for the group of
/// products that share it.
const Input = struct {
    x: []const f32,
    rows: usize,
    d: usize,
    packed_f32: gemm.Packed = undefined,
    packed_q8: gemm_q8.Packed = undefined,
    wsum: []i32 = &.{},
    wconv: []f32 = &.{},
};

fn prepare(pool: *Pool, s: *BatchState, x: []const f32, rows: usize, d: usize, ws: []const Matrix) Input {
    var in: Input = .{ .x = x, .rows = rows, .d = d };
    var job: PrepareJob = .{ .s = s, .x = x, .rows = rows, .d = d };
    for (ws) |w| switch (w) {
        .f32, .f16, .bf16 => job.f32_pack = rows > 1,
        .q8_0 => job.q8_pack = true,
    };
    // one row is quick to pack on this thread; more are shared out, since on many threads the
    // calling thread's share of the work is what the others wait for
    const fixed = job;
    if (rows == 1) PrepareJob.work(&fixed, 0, 1) else pool.run(&fixed, PrepareJob.work);
    if (job.f32_pack) in.packed_f32 = .{ .pack = s.pack, .rows = rows, .d = d };
    if (job.q8_pack) {
        in.packed_q8 = gemm_q8.packedOf(s.qx, s.dx, rows, d);
        in.wsum = s.wsum;
    }
    in.wconv = s.wconv;
    return in;
}

/// A product group's input packed (fp32) and quantized (Q8_0), panels split across chunks.
const PrepareJob = struct {
    s: *BatchState,
    x: []const f32,
    rows: usize,
    d: usize,
    f32_pack: bool = false,
    q8_pack: bool = false,

    fn work(job: *const PrepareJob, chunk: usize, n_chunks: usize) void {
        if (job.f32_pack) {
            const n = gemm.panels(job.rows);
            gemm.packPanelsF32(job.s.pack, job.x, job.rows, job.d, n * chunk / n_chunks, n * (chunk + 1) / n_chunks);
        }
        if (job.q8_pack) {
            const nq = gemm_q8.groups(job.rows);
            gemm_q8.quantizeGroups(job.s.qx, job.s.dx, job.x, job.rows, job.d, nq * chunk / n_chunks, nq * (chunk + 1) / n_chunks);
        }
    }
};

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
        .f16 => |h| if (in.rows == 1)
            h16.matmulRows16(.f16, out, h, in.x[0..in.d], r0, r1)
        else
            gemm.gemmRows16(.f16, out, ldo, h, in.packed_f32, r0, r1, in.wconv[chunk * gemm.TILE_R * in.d ..][0 .. gemm.TILE_R * in.d]),
        .bf16 => |b| if (in.rows == 1)
            h16.matmulRows16(.bf16, out, b, in.x[0..in.d], r0, r1)
        else
            gemm.gemmRows16(.bf16, out, ldo, b, in.packed_f32, r0, r1, in.wconv[chunk * gemm.TILE_R * in.d ..][0 .. gemm.TILE_R * in.d]),
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
    const job: GemmJob = .{ .in = prepare(pool, s, x, rows, d, &.{w}), .outs = .{ out, &.{}, &.{} }, .ldos = .{ ldo, 0, 0 }, .ns = .{ n, 0, 0 }, .ws = .{ w, none, none }, .count = 1 };
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
            var j: usize = 0;
            while (j + VLa <= g.len) : (j += VLa) {
                const gv: Va = g[j..][0..VLa].*;
                const one: Va = @splat(1);
                g[j..][0..VLa].* = gv / (one + expVec(-gv)) * @as(Va, u[j..][0..VLa].*); // silu(x) = x * sigmoid(x)
            }
            if (j < g.len) {
                // the tail through expVec too, so that every element's exp is the same
                // function wherever the chunk boundaries fall (they move with -j)
                var tail: [VLa]f32 = @splat(0);
                @memcpy(tail[0 .. g.len - j], g[j..]);
                const e: [VLa]f32 = expVec(-@as(Va, tail));
                for (g[j..], u[j..], e[0 .. g.len - j]) |*gi, ui, ei| gi.* = gi.* / (1.0 + ei) * ui;
            }
        }
    }
};

/// Rows of one head taken together by the attention: each key and value row loaded serves them
/// all (from L1 after the first), instead of every row streaming the head's cache by itself.
const ATT_ROWS = 8;

/// Causal attention of rows [0, T) at positions p0 + t, ATT_ROWS rows of one head at a time.
/// The (row block, head) pairs are dealt to chunks round-robin: a row's cost grows with its
/// position, so contiguous ranges would leave the last chunk the most work.
const AttentionJob = struct {
    c: Config,
    s: *const BatchState,
    key_cache: []const f32,
    value_cache: []const f32,
    kv_rows: usize,
    layer: usize,
    p0: usize,
    rows: usize,

    fn work(job: *const AttentionJob, chunk: usize, n_chunks: usize) void {
        const c = job.c;
        const s = job.s;
        const hs = c.headSize();
        const kv_dim = c.kvDim();
        const kv_mul = c.n_heads / c.n_kv_heads;
        const loff = job.layer * job.kv_rows * kv_dim;
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(hs)));
        const n_blocks = (job.rows + ATT_ROWS - 1) / ATT_ROWS;
        var i = chunk;
        while (i < n_blocks * c.n_heads) : (i += n_chunks) {
            const t0 = (i / c.n_heads) * ATT_ROWS;
            const h = i % c.n_heads;
            const nr = @min(ATT_ROWS, job.rows - t0);
            const n_pos = job.p0 + t0 + nr; // positions the block's last row attends to
            const kvo = loff + (h / kv_mul) * hs;
            // one row of scores per block row, zero past the row's own position so that the
            // weighted sum can run every row over the same positions
            var att: [ATT_ROWS][]f32 = undefined;
            for (0..ATT_ROWS) |r| att[r] = s.att[(chunk * ATT_ROWS + r) * c.seq_len ..][0..n_pos];
            if (hs % VLa == 0) {
                scoresVec(nr, att, s.q[t0 * c.dim + h * hs ..], c.dim, job.key_cache[kvo..], kv_dim, hs, job.p0 + t0, scale);
            } else for (0..n_pos) |p| {
                const k = job.key_cache[kvo + p * kv_dim ..][0..hs];
                for (0..nr) |r| {
                    const pos = job.p0 + t0 + r;
                    att[r][p] = if (p <= pos) dot(s.q[(t0 + r) * c.dim + h * hs ..][0..hs], k) * scale else 0;
                }
            }
            for (0..nr) |r| softmaxFast(att[r][0 .. job.p0 + t0 + r + 1]);
            for (nr..ATT_ROWS) |r| @memset(att[r], 0);
            var outs: [ATT_ROWS][]f32 = undefined;
            for (0..ATT_ROWS) |r| outs[r] = if (r < nr) s.xb[(t0 + r) * c.dim + h * hs ..][0..hs] else &.{};
            weightedValues(nr, &outs, att, job.value_cache[kvo..], kv_dim, hs);
        }
    }
};

const VLa = gemm.VL;
const Va = @Vector(VLa, f32);

/// att[r][p] = q_r . k_p * scale for the block's rows (q_r = q[r * ldq ..][0..hs]), 0 past row
/// r's position pos0 + r; hs a multiple of VLa. VLa positions at a time: each row's VLa
/// products as vectors of partial sums, reduced together by transposeSum (one shuffle tree for
/// VLa scores instead of one per score, which dot's horizontal sums cost).
fn scoresVec(nr: usize, att: [ATT_ROWS][]f32, q: []const f32, ldq: usize, keys: []const f32, stride: usize, hs: usize, pos0: usize, scale: f32) void {
    const n_pos = att[0].len;
    var pb: usize = 0;
    while (pb < n_pos) : (pb += VLa) {
        const np = @min(VLa, n_pos - pb);
        for (0..nr) |r| {
            const qr = q[r * ldq ..][0..hs];
            var part: [VLa]Va = @splat(@splat(0));
            for (0..np) |jj| {
                const k = keys[(pb + jj) * stride ..][0..hs];
                var acc: Va = @splat(0);
                var u: usize = 0;
                while (u < hs) : (u += VLa) acc = gemm.madd(acc, qr[u..][0..VLa].*, k[u..][0..VLa].*);
                part[jj] = acc;
            }
            const sums: [VLa]f32 = transposeSum(part) * @as(Va, @splat(scale));
            for (0..np) |jj| att[r][pb + jj] = if (pb + jj <= pos0 + r) sums[jj] else 0;
        }
    }
}

/// Lane i of the result is the sum of vs[i]'s lanes. Pairs of vectors are combined in stages:
/// one holding m sources' partial sums p = VLa / m to a source and its neighbour become one
/// vector of 2m sources' p / 2 partial sums, until one vector holds every source's total.
fn transposeSum(vs: [VLa]Va) Va {
    var cur = vs;
    comptime var m: usize = 1;
    inline while (m < VLa) : (m *= 2) {
        inline for (0..VLa / (2 * m)) |i| {
            cur[i] = @shuffle(f32, cur[2 * i], cur[2 * i + 1], combineMask(m, 0)) +
                @shuffle(f32, cur[2 * i], cur[2 * i + 1], combineMask(m, 1));
        }
    }
    return cur[0];
}

/// transposeSum's lanes: lane s' * (p / 2) + j of the combined vector takes partial j (or
/// j + p / 2, the second half) of source s' from the first vector, or of s' - m from the second.
fn combineMask(comptime m: usize, comptime half: usize) @Vector(VLa, i32) {
    comptime {
        const p = VLa / m;
        const hp = p / 2;
        var mask: [VLa]i32 = undefined;
        for (0..VLa) |lane| {
            const src = lane / hp;
            const at = lane % hp + half * hp;
            mask[lane] = if (src < m) @intCast(src * p + at) else ~@as(i32, @intCast((src - m) * p + at));
        }
        return mask;
    }
}

/// outs[r] = sum over p of att[r][p] * v_p for the block's rows, v_p = values[p * stride ..]
/// [0..hs]: two vectors of the head at a time (ATT_ROWS x 2 accumulators in registers), each
/// value vector loaded once for all rows.
/// Written as a scalar loop, LLVM kept it scalar (the output and the cache may alias as far as
/// it knows), and it took most of the attention's time.
fn weightedValues(nr: usize, outs: *const [ATT_ROWS][]f32, att: [ATT_ROWS][]f32, values: []const f32, stride: usize, hs: usize) void {
    const n_pos = att[0].len;
    var j: usize = 0;
    while (j + 2 * VLa <= hs) : (j += 2 * VLa) weightedGroup(2, nr, outs, att, values, stride, j, n_pos);
    while (j + VLa <= hs) : (j += VLa) weightedGroup(1, nr, outs, att, values, stride, j, n_pos);
    while (j < hs) : (j += 1) {
        for (0..nr) |r| {
            var acc: f32 = 0;
            for (att[r], 0..) |a, p| acc += a * values[p * stride + j];
            outs[r][j] = acc;
        }
    }
}

inline fn weightedGroup(comptime NV: usize, nr: usize, outs: *const [ATT_ROWS][]f32, att: [ATT_ROWS][]f32, values: []const f32, stride: usize, j: usize, n_pos: usize) void {
    var acc: [ATT_ROWS][NV]Va = @splat(@splat(@splat(0)));
    for (0..n_pos) |p| {
        var v: [NV]Va = undefined;
        inline for (0..NV) |u| v[u] = values[p * stride + j + u * VLa ..][0..VLa].*;
        inline for (0..ATT_ROWS) |r| {
            const a: Va = @splat(att[r][p]);
            inline for (0..NV) |u| acc[r][u] = gemm.madd(acc[r][u], a, v[u]);
        }
    }
    for (0..nr) |r| {
        inline for (0..NV) |u| outs[r][j + u * VLa ..][0..VLa].* = acc[r][u];
    }
}

/// softmax with exp as expVec: compiler-rt's scalar expf (and its ldexp) took a sixth of a
/// long prefill. The sum's order and exp's last bit differ from the one-position path's
/// softmax, within float32 rounding.
fn softmaxFast(x: []f32) void {
    // max and division vector by vector too: as scalar loops (@max minding NaNs) they cost
    // as much as the exps
    var mv: Va = @splat(x[0]);
    var i: usize = 0;
    while (i + VLa <= x.len) : (i += VLa) mv = @max(mv, @as(Va, x[i..][0..VLa].*));
    var max_val = @reduce(.Max, mv);
    for (x[i..]) |v| max_val = @max(max_val, v);
    const m: Va = @splat(max_val);
    var sum: Va = @splat(0);
    i = 0;
    while (i + VLa <= x.len) : (i += VLa) {
        const e = expVec(@as(Va, x[i..][0..VLa].*) - m);
        x[i..][0..VLa].* = e;
        sum += e;
    }
    var total = @reduce(.Add, sum);
    while (i < x.len) : (i += 1) {
        x[i] = @exp(x[i] - max_val);
        total += x[i];
    }
    const tv: Va = @splat(total);
    i = 0;
    while (i + VLa <= x.len) : (i += VLa) x[i..][0..VLa].* = @as(Va, x[i..][0..VLa].*) / tv;
    for (x[i..]) |*v| v.* /= total;
}

/// e^x to about one ulp: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf polynomial,
/// 2^n put into the exponent bits. Below -87.3 (where 2^n would leave the normal range) the
/// result is 0, which neither a softmax nor silu can tell from a subnormal; above 88 it is
/// infinity (e^88.7 is float32's largest), which silu turns into the same 0.
fn expVec(x: Va) Va {
    const lo: Va = @splat(-87.3);
    const hi: Va = @splat(88);
    const xc = @min(@max(x, lo), hi);
    const magic: Va = @splat(0x1.8p23);
    const n = (xc * @as(Va, @splat(1.44269504088896341)) + magic) - magic; // round to nearest
    var r = xc - n * @as(Va, @splat(0.693359375));
    r = r - n * @as(Va, @splat(-2.12194440e-4));
    var p: Va = @splat(1.9875691500e-4);
    p = gemm.madd(@splat(1.3981999507e-3), p, r);
    p = gemm.madd(@splat(8.3334519073e-3), p, r);
    p = gemm.madd(@splat(4.1665795894e-2), p, r);
    p = gemm.madd(@splat(1.6666665459e-1), p, r);
    p = gemm.madd(@splat(5.0000001201e-1), p, r);
    const y = gemm.madd(r + @as(Va, @splat(1)), p * r, r);
    const ni: @Vector(VLa, i32) = @intFromFloat(n);
    const two_n: Va = @bitCast((ni + @as(@Vector(VLa, i32), @splat(127))) << @splat(23));
    const e = y * two_n;
    return @select(f32, x > hi, @as(Va, @splat(std.math.inf(f32))), @select(f32, x < lo, @as(Va, @splat(0)), e));
}

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
    const kv_rows = tr.state.kv_rows;
    std.debug.assert(T >= 1 and T <= s.rows and p0 + T <= kv_rows);

    for (tokens, 0..) |token, t| {
        const row = s.x[t * dim ..][0..dim];
        switch (w.token_embedding) {
            .f32 => |e| @memcpy(row, e[token * dim ..][0..dim]),
            .q8_0 => |qe| q8.dequantizeRow(row, qe[token * (dim / QB) ..][0 .. dim / QB]),
            .f16 => |h| h16.widenRow(.f16, row, h[token * dim ..][0..dim]),
            .bf16 => |b| h16.widenRow(.bf16, row, b[token * dim ..][0..dim]),
        }
        forward_mod.ropeAt(s.rope_cos[t * half ..][0..half], s.rope_sin[t * half ..][0..half], c, p0 + t);
    }

    for (w.layers, 0..) |*lw, l| {
        // attention: every row's q, k, v, with k and v written into the cache rows p0..p0+T-1
        for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], lw.rms_att, c.norm_eps);
        const loff = l * kv_rows * kv_dim;
        const k = kc[loff + p0 * kv_dim ..][0 .. T * kv_dim];
        const v = vc[loff + p0 * kv_dim ..][0 .. T * kv_dim];
        const qkv: GemmJob = .{
            .in = prepare(pool, s, s.xb[0 .. T * dim], T, dim, &.{ lw.wq, lw.wk, lw.wv }),
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
        const att: AttentionJob = .{ .c = c, .s = s, .key_cache = kc, .value_cache = vc, .kv_rows = kv_rows, .layer = l, .p0 = p0, .rows = T };
        pool.run(&att, AttentionJob.work);
        product(pool, s, s.xb2, dim, lw.wo, dim, s.xb[0 .. T * dim], T, dim);
        for (s.x[0 .. T * dim], s.xb2[0 .. T * dim]) |*xi, o| xi.* += o;

        // feed-forward
        for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], lw.rms_ffn, c.norm_eps);
        const ffn: FfnJob = .{ .in = prepare(pool, s, s.xb[0 .. T * dim], T, dim, &.{ lw.w1, lw.w3 }), .hb = s.hb, .hb2 = s.hb2, .hidden = hidden, .w1 = lw.w1, .w3 = lw.w3 };
        pool.run(&ffn, FfnJob.work);
        product(pool, s, s.xb2, dim, lw.w2, dim, s.hb[0 .. T * hidden], T, hidden);
        for (s.x[0 .. T * dim], s.xb2[0 .. T * dim]) |*xi, o| xi.* += o;
    }

    const vocab = c.vocab_size;
    switch (want) {
        .none => return s.logits[0..0],
        .last => {
            const xl = s.xb[0..dim];
            rmsnorm(xl, s.x[(T - 1) * dim ..][0..dim], w.rms_final, c.norm_eps);
            product(pool, s, s.logits, vocab, w.wcls, vocab, xl, 1, dim);
            return s.logits[0..vocab];
        },
        .all => {
            for (0..T) |t| rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], w.rms_final, c.norm_eps);
            product(pool, s, s.logits, vocab, w.wcls, vocab, s.xb[0 .. T * dim], T, dim);
            return s.logits[0 .. T * vocab];
        },
    }
}

test "expVec is exp within a few ulp, 0 far below, infinity far above" {
    try std.testing.expectEqual(std.math.inf(f32), expVec(@splat(89))[0]);
    var x: f32 = 88;
    while (x > -90) : (x -= 0.0137) {
        const got = expVec(@splat(x))[0];
        const want = @exp(x);
        if (x < -87.3) {
            try std.testing.expectEqual(@as(f32, 0), got);
        } else {
            try std.testing.expectApproxEqRel(want, got, 4e-7);
        }
    }
    try std.testing.expectEqual(@as(f32, 1), expVec(@splat(0))[0]);
}

test "softmaxFast matches softmax, tails included" {
    var prng: std.Random.DefaultPrng = .init(5);
    const rand = prng.random();
    for ([_]usize{ 1, 5, VLa, 3 * VLa + 7 }) |n| {
        var a: [3 * 16 + 7]f32 = undefined;
        var b: [3 * 16 + 7]f32 = undefined;
        for (a[0..n], b[0..n]) |*u, *v| {
            u.* = rand.floatNorm(f32) * 4;
            v.* = u.*;
        }
        softmax(a[0..n]);
        softmaxFast(b[0..n]);
        for (a[0..n], b[0..n]) |u, v| try std.testing.expectApproxEqAbs(u, v, 1e-6);
    }
}

test "transposeSum: lane i is the sum of vector i" {
    var vs: [VLa]Va = undefined;
    var want: [VLa]f32 = undefined;
    for (0..VLa) |i| {
        var a: [VLa]f32 = undefined;
        for (&a, 0..) |*v, j| v.* = @floatFromInt(i * 100 + j);
        vs[i] = a;
        want[i] = @floatFromInt(i * 100 * VLa + VLa * (VLa - 1) / 2);
    }
    const got: [VLa]f32 = transposeSum(vs);
    try std.testing.expectEqualSlices(f32, &want, &got);
}
