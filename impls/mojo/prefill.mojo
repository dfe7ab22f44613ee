# The batched forward pass (contract section 6): positions p0 .. p0 + T - 1 at once,
# row t being forward(tokens[t], p0 + t). Each weight matrix is one matrix-matrix
# product per batch (gemm.mojo), split once across the workers by blocks of weight
# rows; attention is split by (row, head) pairs. The KV cache is the run state's.

from std.collections import List
from std.math import exp, sqrt, cos, sin
from model import Config, FPtr, Matrix, Model, QPtr, alloc_floats, alloc_quants, free_floats, free_quants
from q8_0 import Q8_BLOCK, quantize_activation
from kernels import NW, dot, rmsnorm, softmax, split
from gemm import TC, Rows, gemm_rows, scores_block, weighted_sum
from forward import RunState, embed
from pool import Pool


struct BatchState(Movable):
    """Activations of up to `rows` positions, sized once at load."""

    var rows: Int  # min(batch, seq_len, the run's KV cache rows)
    var batch: Int  # min(batch, seq_len): the batch the statistics line reports
    var logit_rows: Int  # rows of logits kept: all in logits mode, else the last one
    var nthreads: Int
    var x: FPtr  # (rows, dim) residual streams
    var xb: FPtr  # (rows, dim) normed inputs
    var q: FPtr  # (rows, dim)
    var xatt: FPtr  # (rows, dim) attention outputs
    var xb2: FPtr  # (rows, dim) wo and w2 outputs
    var hb: FPtr  # (rows, hidden_dim)
    var hb2: FPtr  # (rows, hidden_dim)
    var att: FPtr  # (nthreads, TC, kv_rows) each worker's attention scores
    var kv_rows: Int  # the run state's KV cache rows
    var rope_cos: FPtr  # (rows, dim / 2)
    var rope_sin: FPtr  # (rows, dim / 2)
    var logits: FPtr  # (logit_rows, vocab)
    var xq: QPtr  # (rows, max(dim, hidden_dim)) quantized inputs of Q8_0 products
    var xd: FPtr  # (rows, max(dim, hidden_dim) / 32) their scales

    def __init__(out self, c: Config, batch: Int, all_logits: Bool, nthreads: Int, kv_rows: Int) raises:
        """kv_rows: the run state's. A run reaches no more positions than that, so
        batches of min(batch, kv_rows) rows are the batches of `batch` rows it runs."""
        self.batch = max(1, min(batch, c.seq_len))
        self.kv_rows = max(1, min(kv_rows, c.seq_len))
        var rows = min(self.batch, self.kv_rows)
        self.rows = rows
        self.logit_rows = rows if all_logits else 1
        self.nthreads = max(1, nthreads)
        var widest = max(c.dim, c.hidden_dim)
        self.x = alloc_floats(rows * c.dim)
        self.xb = alloc_floats(rows * c.dim)
        self.q = alloc_floats(rows * c.dim)
        self.xatt = alloc_floats(rows * c.dim)
        self.xb2 = alloc_floats(rows * c.dim)
        self.hb = alloc_floats(rows * c.hidden_dim)
        self.hb2 = alloc_floats(rows * c.hidden_dim)
        self.att = alloc_floats(self.nthreads * TC * self.kv_rows)
        self.rope_cos = alloc_floats(rows * (c.dim // 2))
        self.rope_sin = alloc_floats(rows * (c.dim // 2))
        self.logits = alloc_floats(self.logit_rows * c.vocab_size)
        self.xq = alloc_quants(rows * widest)
        self.xd = alloc_floats(rows * (widest // Q8_BLOCK) + 1)

    def free(mut self):
        for p in [self.x, self.xb, self.q, self.xatt, self.xb2, self.hb, self.hb2, self.att,
                  self.rope_cos, self.rope_sin, self.logits, self.xd]:
            free_floats(p)
        free_quants(self.xq)


def prepare_rows(b: BatchState, x: FPtr, src: FPtr, norm: FPtr, eps: Float32, with_norm: Bool, quantize: Bool,
                 d: Int, t0: Int, t1: Int):
    var nb = d // Q8_BLOCK
    for t in range(t0, t1):
        if with_norm:
            rmsnorm(x.unsafe_offset(t * d), src.unsafe_offset(t * d), norm, d, eps)
        if quantize:
            quantize_activation(b.xq.unsafe_offset(t * d), b.xd.unsafe_offset(t * nb), x.unsafe_offset(t * d), d)


def rows_input(b: BatchState, x: FPtr, nrows: Int, d: Int, quantize: Bool, pool: Pool) raises -> Rows:
    return normed_rows_input(b, x, nrows, d, quantize, pool, x, x, 0, False)


def normed_rows_input(b: BatchState, x: FPtr, nrows: Int, d: Int, quantize: Bool, pool: Pool,
                      norm: FPtr, src: FPtr, eps: Float32, with_norm: Bool) raises -> Rows:
    """x's rows as the input of a group of products: with `with_norm`, first
    x[t] = rmsnorm(src[t], norm, eps); when a matrix of the group is Q8_0, each row
    quantized on its own (section 4's blocks of 32 along the row), once for the
    group (F32, F16 and BF16 matrices take the rows as they are). The rows are split
    across the workers: this is work the size of the activations, which on many
    workers would otherwise wait on one thread."""
    if not (with_norm or quantize):
        return Rows(x, b.xq, b.xd, nrows, d)
    var nthreads = pool.n
    if nthreads > 1 and nrows > 1:
        def task(w: Int) {imm}:
            prepare_rows(b, x, src, norm, eps, with_norm, quantize, d, nrows * w // nthreads,
                         nrows * (w + 1) // nthreads)

        pool.run(task)
    else:
        prepare_rows(b, x, src, norm, eps, with_norm, quantize, d, 0, nrows)
    return Rows(x, b.xq, b.xd, nrows, d)


def product(dst: FPtr, ldo: Int, inp: Rows, w: Matrix, n: Int, pool: Pool) raises:
    """out (nrows, n) = inp @ W^T, W's rows split across the workers."""
    var nthreads = pool.n
    if nthreads <= 1:
        gemm_rows(dst, ldo, inp, w, 0, n)
        return

    def task(t: Int) {imm}:
        gemm_rows(dst, ldo, inp, w, split(n, t, nthreads), split(n, t + 1, nthreads))

    pool.run(task)


def rope_rows(b: BatchState, p0: Int, nrows: Int, dim: Int, hs: Int, theta: Float32):
    """Each row's rotation angles at its own position, as rope_angles computes them."""
    var half = dim // 2
    for t in range(nrows):
        for i in range(half):
            var hd = (2 * i) % hs
            var freq = Float32(1.0) / (theta ** (Float32(hd) / Float32(hs)))
            var a = Float32(p0 + t) * freq
            b.rope_cos.unsafe_store(t * half + i, cos(a))
            b.rope_sin.unsafe_store(t * half + i, sin(a))


def rotate(vec: FPtr, fc: FPtr, fs: FPtr, n: Int):
    for i in range(n // 2):
        var c = fc.unsafe_load(i)
        var s = fs.unsafe_load(i)
        var v0 = vec.unsafe_load(2 * i)
        var v1 = vec.unsafe_load(2 * i + 1)
        vec.unsafe_store(2 * i, v0 * c - v1 * s)
        vec.unsafe_store(2 * i + 1, v0 * s + v1 * c)


def attend(s: RunState, b: BatchState, c: Config, l: Int, p0: Int, nrows: Int, worker: Int, nworkers: Int):
    """Causal attention of layer l for the rows' (row, head) pairs, in items of one
    head and up to TC consecutive rows (the pairs that share the head's keys): row t
    at position p0 + t attends to cache positions 0 .. p0 + t. The worker takes
    items worker, worker + nworkers, ...: the rows' growing lengths spread evenly."""
    var hs = c.head_size()
    var kv_dim = c.kv_dim()
    var dim = c.dim
    var kv_mul = c.n_heads // c.n_kv_heads
    var scale = Float32(1.0) / sqrt(Float32(hs))
    var layer_off = l * s.kv_rows * kv_dim
    var ld = s.kv_rows  # a row of scores holds every key the run reaches
    var scores = b.att.unsafe_offset(worker * TC * ld)
    var blocks = (nrows + TC - 1) // TC
    var item = worker
    while item < blocks * c.n_heads:
        var h = item % c.n_heads
        var t0 = (item // c.n_heads) * TC
        var t1 = min(nrows, t0 + TC)
        var head_off = layer_off + (h // kv_mul) * hs
        var keys = s.key_cache.unsafe_offset(head_off)
        # every key up to the block's last row; each row then uses its own prefix
        scores_block(scores, ld, b.q.unsafe_offset(t0 * dim + h * hs), dim, keys, kv_dim, hs,
                     t1 - t0, p0 + t1)
        for t in range(t0, t1):
            var n = p0 + t + 1
            var att = scores.unsafe_offset((t - t0) * ld)
            for u in range(n):
                att.unsafe_store(u, att.unsafe_load(u) * scale)
            softmax(att, n)
            weighted_sum(b.xatt.unsafe_offset(t * dim + h * hs), att, s.value_cache.unsafe_offset(head_off),
                         kv_dim, hs, n)
        item += nworkers


def swiglu(hb: FPtr, hb2: FPtr, nrows: Int, hidden: Int, c0: Int, c1: Int):
    """hb = silu(hb) * hb2 in columns [c0, c1) of every row: a worker's own w1 and w3
    outputs, gated in the same region."""
    for t in range(nrows):
        for i in range(t * hidden + c0, t * hidden + c1):
            var g = hb.unsafe_load(i)
            hb.unsafe_store(i, g / (Float32(1.0) + exp(-g)) * hb2.unsafe_load(i))


def add_rows(x: FPtr, y: FPtr, n: Int):
    for i in range(n):
        x.unsafe_store(i, x.unsafe_load(i) + y.unsafe_load(i))


def forward_batch(s: RunState, b: BatchState, m: Model, tokens: List[Int], start: Int, nrows: Int,
                  p0: Int, logits_from: Int, pool: Pool) raises:
    """Positions p0 .. p0 + nrows - 1 for tokens[start .. start + nrows - 1]; their k
    and v go into the cache. The logits of rows logits_from .. nrows - 1 land in
    b.logits' rows 0 .. (none when logits_from >= nrows)."""
    var c = m.config.copy()
    var dim = c.dim
    var hidden = c.hidden_dim
    var kv_dim = c.kv_dim()
    var hs = c.head_size()
    var half = dim // 2
    var nthreads = pool.n
    for t in range(nrows):
        embed(b.x.unsafe_offset(t * dim), m, tokens[start + t], dim)
    rope_rows(b, p0, nrows, dim, hs, c.rope_theta)
    for l in range(c.n_layers):
        # attention: q, k, v (k and v straight into the cache rows p0 .. p0 + nrows - 1)
        var wq = m.weights.wq[l]
        var wk = m.weights.wk[l]
        var wv = m.weights.wv[l]
        var inp = normed_rows_input(b, b.xb, nrows, dim, wq.q8 or wk.q8 or wv.q8, pool,
                                    m.weights.rms_att[l], b.x, c.norm_eps, True)
        var cache_off = (l * s.kv_rows + p0) * kv_dim
        var kc = s.key_cache.unsafe_offset(cache_off)
        var vc = s.value_cache.unsafe_offset(cache_off)
        var q = b.q
        if nthreads <= 1:
            gemm_rows(q, dim, inp, wq, 0, dim)
            gemm_rows(kc, kv_dim, inp, wk, 0, kv_dim)
            gemm_rows(vc, kv_dim, inp, wv, 0, kv_dim)
        else:
            def qkv_task(t: Int) {imm}:
                gemm_rows(q, dim, inp, wq, split(dim, t, nthreads), split(dim, t + 1, nthreads))
                gemm_rows(kc, kv_dim, inp, wk, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))
                gemm_rows(vc, kv_dim, inp, wv, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))

            pool.run(qkv_task)
        # every row's k rotated and stored before any row attends
        for t in range(nrows):
            var fc = b.rope_cos.unsafe_offset(t * half)
            var fs = b.rope_sin.unsafe_offset(t * half)
            rotate(q.unsafe_offset(t * dim), fc, fs, dim)
            rotate(kc.unsafe_offset(t * kv_dim), fc, fs, kv_dim)
        if nthreads <= 1:
            attend(s, b, c, l, p0, nrows, 0, 1)
        else:
            def att_task(t: Int) {imm}:
                attend(s, b, c, l, p0, nrows, t, nthreads)

            pool.run(att_task)
        var wo = m.weights.wo[l]
        product(b.xb2, dim, rows_input(b, b.xatt, nrows, dim, wo.q8, pool), wo, dim, pool)
        add_rows(b.x, b.xb2, nrows * dim)

        # feed-forward
        var w1 = m.weights.w1[l]
        var w3 = m.weights.w3[l]
        var finp = normed_rows_input(b, b.xb, nrows, dim, w1.q8 or w3.q8, pool, m.weights.rms_ffn[l], b.x,
                                     c.norm_eps, True)
        var hb = b.hb
        var hb2 = b.hb2
        if nthreads <= 1:
            gemm_rows(hb, hidden, finp, w1, 0, hidden)
            gemm_rows(hb2, hidden, finp, w3, 0, hidden)
            swiglu(hb, hb2, nrows, hidden, 0, hidden)
        else:
            def ffn_task(t: Int) {imm}:
                var r0 = split(hidden, t, nthreads)
                var r1 = split(hidden, t + 1, nthreads)
                gemm_rows(hb, hidden, finp, w1, r0, r1)
                gemm_rows(hb2, hidden, finp, w3, r0, r1)
                swiglu(hb, hb2, nrows, hidden, r0, r1)

            pool.run(ffn_task)
        var w2 = m.weights.w2[l]
        product(b.xb2, dim, rows_input(b, hb, nrows, hidden, w2.q8, pool), w2, dim, pool)
        add_rows(b.x, b.xb2, nrows * dim)

    if logits_from < nrows:
        var n_out = nrows - logits_from
        var xs = b.x.unsafe_offset(logits_from * dim)
        for t in range(n_out):
            rmsnorm(xs.unsafe_offset(t * dim), xs.unsafe_offset(t * dim), m.weights.rms_final, dim, c.norm_eps)
        var wcls = m.weights.wcls
        product(b.logits, c.vocab_size, rows_input(b, xs, n_out, dim, wcls.q8, pool), wcls, c.vocab_size, pool)
