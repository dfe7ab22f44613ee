# run.c's forward pass: the run state (activations and KV cache) and one token
# through the layers, each layer's attention and feed-forward blocks handed to the
# pool in as few parallel regions as their data dependencies allow.

from std.math import exp, sqrt, cos, sin
from std.os import getenv
from model import (
    W_BF16, W_F16, W_Q8_0, Config, FPtr, Matrix, Model, QPtr, alloc_floats, alloc_quants, free_floats, free_quants,
)
from q8_0 import Q8_BLOCK, Q8_PREFETCH_ROWS, dequantize_row, q8_row_bytes, quantize_activation
from half import widen_row
from kernels import NW, Input, dot, matvec_rows, rmsnorm, softmax, split
from pool import Pool


struct RunState(Movable):
    """Activations of the current position and the KV cache, which holds the
    positions this run can reach (kv_rows), not the whole context."""

    var x: FPtr  # (dim) residual stream
    var xb: FPtr  # (dim) normed input of the attention and FFN blocks
    var xatt: FPtr  # (dim) attention output, all heads (workers still read xb meanwhile)
    var xb2: FPtr  # (dim) wo and w2 output
    var hb: FPtr  # (hidden_dim) w1 output, then the gated hidden state
    var hb2: FPtr  # (hidden_dim) w3 output
    var q: FPtr  # (dim)
    var att: FPtr  # (n_heads, kv_rows) attention scores
    var rope_cos: FPtr  # (dim / 2) rotation of each adjacent pair at this position
    var rope_sin: FPtr  # (dim / 2)
    var logits: FPtr  # (vocab)
    var key_cache: FPtr  # (layer, kv_rows, kv_dim)
    var value_cache: FPtr  # (layer, kv_rows, kv_dim)
    var kv_rows: Int  # positions the run reaches: steps (generate) or -k ids (logits)
    var xq: QPtr  # (max(dim, hidden_dim)) the input of the current Q8_0 matmuls, quantized
    var xd: FPtr  # (max(dim, hidden_dim) / 32) and its block scales
    var q8_prefetch: Int  # rows ahead a Q8_0 matvec prefetches (q8_0.mojo); 0 with POLYLLAMA_Q8_PREFETCH=0

    def __init__(out self, c: Config, kv_rows: Int) raises:
        """kv_rows: validated by Config.check_kv_cache (at most seq_len)."""
        self.kv_rows = max(1, min(kv_rows, c.seq_len))
        var cache = c.n_layers * self.kv_rows * c.kv_dim()
        self.x = alloc_floats(c.dim)
        self.xb = alloc_floats(c.dim)
        self.xatt = alloc_floats(c.dim)
        self.xb2 = alloc_floats(c.dim)
        self.hb = alloc_floats(c.hidden_dim)
        self.hb2 = alloc_floats(c.hidden_dim)
        self.q = alloc_floats(c.dim)
        self.att = alloc_floats(c.n_heads * self.kv_rows)
        self.rope_cos = alloc_floats(c.dim // 2)
        self.rope_sin = alloc_floats(c.dim // 2)
        self.logits = alloc_floats(c.vocab_size)
        self.key_cache = alloc_floats(cache)
        self.value_cache = alloc_floats(cache)
        var widest = max(c.dim, c.hidden_dim)
        self.xq = alloc_quants(widest)
        self.xd = alloc_floats(widest // Q8_BLOCK + 1)
        self.q8_prefetch = 0 if getenv("POLYLLAMA_Q8_PREFETCH") == "0" else Q8_PREFETCH_ROWS

    def free(mut self):
        for p in [self.x, self.xb, self.xatt, self.xb2, self.hb, self.hb2, self.q, self.att,
                  self.rope_cos, self.rope_sin, self.logits, self.key_cache, self.value_cache, self.xd]:
            free_floats(p)
        free_quants(self.xq)


def group_input(s: RunState, x: FPtr, n: Int, quantize: Bool) -> Input:
    """x as the input of a group of matmuls, quantized into the run state's buffers
    when `quantize` (a matrix of the group is Q8_0; F32, F16 and BF16 matrices take
    x as it is)."""
    if quantize:
        quantize_activation(s.xq, s.xd, x, n)
    return Input(x, s.xq, s.xd, s.q8_prefetch)


def matmul(s: RunState, xout: FPtr, x: FPtr, w: Matrix, n: Int, d: Int, pool: Pool) raises:
    """W (d, n) @ x (n) -> xout (d), rows split across the workers."""
    var inp = group_input(s, x, n, w.q8)
    var nthreads = pool.n
    if nthreads <= 1:
        matvec_rows(xout, inp, w, n, 0, d)
        return

    def task(t: Int) {imm}:
        matvec_rows(xout, inp, w, n, split(d, t, nthreads), split(d, t + 1, nthreads))

    pool.run(task)


def attention_heads(s: RunState, c: Config, l: Int, pos: Int, h0: Int, h1: Int):
    """Heads [h0, h1) at layer l: scores against every cached key, softmax, and the
    weighted sum of values into xatt."""
    var hs = c.head_size()
    var kv_dim = c.kv_dim()
    var kv_mul = c.n_heads // c.n_kv_heads
    var scale = Float32(1.0) / sqrt(Float32(hs))
    var layer_off = l * s.kv_rows * kv_dim
    for h in range(h0, h1):
        var q = s.q.unsafe_offset(h * hs)
        var att = s.att.unsafe_offset(h * s.kv_rows)
        var head_off = layer_off + (h // kv_mul) * hs
        for t in range(pos + 1):
            att.unsafe_store(t, dot(q, s.key_cache.unsafe_offset(head_off + t * kv_dim), hs) * scale)
        softmax(att, pos + 1)
        var xb = s.xatt.unsafe_offset(h * hs)
        for i in range(hs):
            xb.unsafe_store(i, 0)
        for t in range(pos + 1):
            var a = att.unsafe_load(t)
            var v = s.value_cache.unsafe_offset(head_off + t * kv_dim)
            var i = 0
            while i + NW <= hs:
                xb.unsafe_store(i, xb.unsafe_load[width=NW](i) + a * v.unsafe_load[width=NW](i))
                i += NW
            while i < hs:
                xb.unsafe_store(i, xb.unsafe_load(i) + a * v.unsafe_load(i))
                i += 1


def rope(vec: FPtr, s: RunState, a: Int, b: Int):
    """Rotate the adjacent pairs of vec[a:b) (a, b even) by this position's angles."""
    for i in range(a // 2, b // 2):
        var fcr = s.rope_cos.unsafe_load(i)
        var fci = s.rope_sin.unsafe_load(i)
        var v0 = vec.unsafe_load(2 * i)
        var v1 = vec.unsafe_load(2 * i + 1)
        vec.unsafe_store(2 * i, v0 * fcr - v1 * fci)
        vec.unsafe_store(2 * i + 1, v0 * fci + v1 * fcr)


def qkv_attention(s: RunState, m: Model, c: Config, inp: Input, l: Int, pos: Int, kv0: Int, kv1: Int):
    """KV heads [kv0, kv1) of layer l and the query heads that read them: their rows
    of q, k and v, RoPE, and attention into xatt."""
    var hs = c.head_size()
    var kv_mul = c.n_heads // c.n_kv_heads
    var dim = c.dim
    var cache_off = (l * s.kv_rows + pos) * c.kv_dim()
    var k = s.key_cache.unsafe_offset(cache_off)
    var v = s.value_cache.unsafe_offset(cache_off)
    var q0 = kv0 * kv_mul * hs
    var q1 = kv1 * kv_mul * hs
    matvec_rows(s.q, inp, m.weights.wq[l], dim, q0, q1)
    matvec_rows(k, inp, m.weights.wk[l], dim, kv0 * hs, kv1 * hs)
    matvec_rows(v, inp, m.weights.wv[l], dim, kv0 * hs, kv1 * hs)
    rope(s.q, s, q0, q1)
    rope(k, s, kv0 * hs, kv1 * hs)
    attention_heads(s, c, l, pos, kv0 * kv_mul, kv1 * kv_mul)


def ffn_rows(s: RunState, inp: Input, w1: Matrix, w3: Matrix, n: Int, r0: Int, r1: Int):
    """hb[r0:r1) = silu(w1 @ xb) * (w3 @ xb): gate, up and SwiGLU in one pass."""
    matvec_rows(s.hb, inp, w1, n, r0, r1)
    matvec_rows(s.hb2, inp, w3, n, r0, r1)
    for i in range(r0, r1):
        var g = s.hb.unsafe_load(i)
        s.hb.unsafe_store(i, g / (Float32(1.0) + exp(-g)) * s.hb2.unsafe_load(i))


def embed(x: FPtr, m: Model, token: Int, dim: Int):
    """x = token_embedding[token] (a Q8_0 table's row dequantized, a 16-bit one's
    converted)."""
    var table = m.weights.token_embedding
    if table.kind == W_Q8_0:
        dequantize_row(x, table.data.unsafe_offset(token * q8_row_bytes(dim)), dim)
    elif table.kind == W_F16:
        widen_row[W_F16](x, table.data.unsafe_offset(2 * token * dim), dim)
    elif table.kind == W_BF16:
        widen_row[W_BF16](x, table.data.unsafe_offset(2 * token * dim), dim)
    else:
        var row = table.floats().unsafe_offset(token * dim)
        for i in range(dim):
            x.unsafe_store(i, row.unsafe_load(i))


def rope_angles(s: RunState, pos: Int, dim: Int, hs: Int, theta: Float32):
    """The RoPE rotation of each adjacent pair at this position: computed once, as
    every layer rotates by the same angles (theta: the model's RoPE base)."""
    for i in range(dim // 2):
        var hd = (2 * i) % hs
        var freq = Float32(1.0) / (theta ** (Float32(hd) / Float32(hs)))
        var a = Float32(pos) * freq
        s.rope_cos.unsafe_store(i, cos(a))
        s.rope_sin.unsafe_store(i, sin(a))


@always_inline
def residual_add(x: FPtr, y: FPtr, n: Int):
    """x += y: a block's output joins the residual stream."""
    for i in range(n):
        x.unsafe_store(i, x.unsafe_load(i) + y.unsafe_load(i))


def attention_block(s: RunState, m: Model, c: Config, l: Int, pos: Int, pool: Pool) raises:
    """x += wo @ attention(rmsnorm(x)) at layer l; this position's k and v go into
    the cache on the way."""
    var nthreads = pool.n
    var dim = c.dim
    var kv_dim = c.kv_dim()
    var wq = m.weights.wq[l]
    var wk = m.weights.wk[l]
    var wv = m.weights.wv[l]
    var cache_off = (l * s.kv_rows + pos) * kv_dim
    # k and v go straight into this position's cache row
    var k = s.key_cache.unsafe_offset(cache_off)
    var v = s.value_cache.unsafe_offset(cache_off)
    var q = s.q

    rmsnorm(s.xb, s.x, m.weights.rms_att[l], dim, c.norm_eps)
    var qkv_in = group_input(s, s.xb, dim, wq.q8 or wk.q8 or wv.q8)

    # q = wq @ xb, k = wk @ xb, v = wv @ xb, RoPE, attention. Each KV head with
    # its query heads needs nothing from the others, so when the KV heads split
    # evenly across the workers all of it is one parallel region.
    var n_kv = c.n_kv_heads
    if nthreads <= 1:
        qkv_attention(s, m, c, qkv_in, l, pos, 0, n_kv)
    elif n_kv % nthreads == 0:
        def fused_task(t: Int) {imm}:
            qkv_attention(s, m, c, qkv_in, l, pos, n_kv * t // nthreads, n_kv * (t + 1) // nthreads)

        pool.run(fused_task)
    else:
        def qkv_task(t: Int) {imm}:
            matvec_rows(q, qkv_in, wq, dim, split(dim, t, nthreads), split(dim, t + 1, nthreads))
            matvec_rows(k, qkv_in, wk, dim, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))
            matvec_rows(v, qkv_in, wv, dim, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))

        pool.run(qkv_task)
        rope(q, s, 0, dim)
        rope(k, s, 0, kv_dim)
        var n_heads = c.n_heads

        def att_task(t: Int) {imm}:
            attention_heads(s, c, l, pos, n_heads * t // nthreads, n_heads * (t + 1) // nthreads)

        pool.run(att_task)

    matmul(s, s.xb2, s.xatt, m.weights.wo[l], dim, dim, pool)
    residual_add(s.x, s.xb2, dim)


def ffn_block(s: RunState, m: Model, c: Config, l: Int, pool: Pool) raises:
    """x += w2 @ (silu(w1 @ xb) * (w3 @ xb)) with xb = rmsnorm(x), at layer l."""
    var nthreads = pool.n
    var dim = c.dim
    var hidden = c.hidden_dim
    rmsnorm(s.xb, s.x, m.weights.rms_ffn[l], dim, c.norm_eps)
    var w1 = m.weights.w1[l]
    var w3 = m.weights.w3[l]
    var ffn_in = group_input(s, s.xb, dim, w1.q8 or w3.q8)
    if nthreads <= 1:
        ffn_rows(s, ffn_in, w1, w3, dim, 0, hidden)
    else:
        def ffn_task(t: Int) {imm}:
            ffn_rows(s, ffn_in, w1, w3, dim, split(hidden, t, nthreads), split(hidden, t + 1, nthreads))

        pool.run(ffn_task)
    matmul(s, s.xb2, s.hb, m.weights.w2[l], hidden, dim, pool)
    residual_add(s.x, s.xb2, dim)


def forward(mut s: RunState, m: Model, token: Int, pos: Int, pool: Pool) raises -> FPtr:
    """Logits (vocab) after feeding `token` at position `pos`."""
    var c = m.config.copy()
    embed(s.x, m, token, c.dim)
    rope_angles(s, pos, c.dim, c.head_size(), c.rope_theta)
    for l in range(c.n_layers):
        attention_block(s, m, c, l, pos, pool)
        ffn_block(s, m, c, l, pool)
    rmsnorm(s.x, s.x, m.weights.rms_final, c.dim, c.norm_eps)
    # logits = wcls @ x
    matmul(s, s.logits, s.x, m.weights.wcls, c.dim, c.vocab_size, pool)
    return s.logits
