"""The reference forward pass: run.c's algorithm in float32 numpy, one token at a time, and the
batched prefill (contract 2) that runs a block of positions through each layer at once.

This is what every port is compared against, so it favours being obviously right over being
fast: one function per step of the transformer, the shapes in comments. A weight may be float32,
Q8_0, F16 or BF16 (GGUF), tensor by tensor; only the matrix products and the embedding lookup
differ.
"""
from __future__ import annotations

import numpy as np

from ..formats import Model, Q8Tensor
from ..formats.half import HalfTensor
from .q8 import matmul as q8_matmul
from .q8 import matvec as q8_matvec
from .q8 import quantize_activation, quantize_rows

def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    ss = np.float32(np.dot(x, x) / np.float32(x.shape[0])) + np.float32(eps)
    return (w * (x * np.float32(1.0 / np.sqrt(ss)))).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float32)
    return (e / e.sum(dtype=np.float32)).astype(np.float32)


def rope_cos_sin(pos, dim: int, head_size: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotation for each adjacent pair (i, i+1) of a dim-long vector; for an
    array of positions, one row per position."""
    head_dim = (np.arange(0, dim, 2) % head_size).astype(np.float32)
    freq = np.float32(1.0) / np.power(np.float32(theta), head_dim / np.float32(head_size))
    angle = (np.asarray(pos, dtype=np.float32)[..., None] * freq).astype(np.float32)
    return np.cos(angle), np.sin(angle)


def rotate_pairs(vec: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Along the last axis, so a (T, n) batch rotates each row by its own row of cos and sin."""
    v0, v1 = vec[..., 0::2], vec[..., 1::2]
    out = np.empty_like(vec)
    out[..., 0::2] = v0 * cos - v1 * sin
    out[..., 1::2] = v0 * sin + v1 * cos
    return out


def rmsnorm_rows(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return np.stack([rmsnorm(row, w, eps) for row in x])


def half_product(x: np.ndarray, w: HalfTensor) -> np.ndarray:
    """x @ W^T (a row or a (T, cols) matrix) with a 16-bit W: its values widened exactly, the
    activation left in float32 (docs/port-contract.md, "GGUF F16 and BF16", says why)."""
    return (x @ w.dequantize().T).astype(np.float32)


def matmuls(x: np.ndarray, *ws, watch=None) -> list[np.ndarray]:
    """X @ W^T for each W, X (T, cols): matvecs' products for T rows at once, one matrix product
    per weight, each Q8_0 activation row quantized once and shared as matvecs does."""
    qx = None
    out = []
    for w in ws:
        if isinstance(w, HalfTensor):
            out.append(half_product(x, w))
        elif isinstance(w, Q8Tensor):
            if qx is None:
                if watch is not None:
                    for row in x:
                        watch(row)
                qx = quantize_rows(x)
            out.append(q8_matmul(w, qx))
        else:
            out.append((x @ w.T).astype(np.float32))
    return out


def embedding(table, token: int) -> np.ndarray:
    if isinstance(table, (Q8Tensor, HalfTensor)):
        return table.row(token)
    return np.array(table[token], dtype=np.float32)


def matvecs(x: np.ndarray, *ws, watch=None) -> list[np.ndarray]:
    """W @ x for each W. For the Q8_0 ones x is quantized once and shared: llama.cpp quantizes it
    per product, which gives the same blocks. `watch(x)` sees each activation that is quantized."""
    qx = None
    out = []
    for w in ws:
        if isinstance(w, HalfTensor):
            out.append(half_product(x, w))
        elif isinstance(w, Q8Tensor):
            if qx is None:
                if watch is not None:
                    watch(x)
                qx = quantize_activation(x)
            out.append(q8_matvec(w, qx))
        else:
            out.append(w @ x)
    return out


class Transformer:
    """Weights plus the run state (KV cache) of one sequence. `watch(x)`, when given, sees every
    activation vector that a Q8_0 product quantizes (validation measures rounding margins)."""

    def __init__(self, model: Model, watch=None, rows: int | None = None):
        """`rows`: the positions the run can reach (contract 3 sizes the cache for those, not for the
        whole context); None for the whole context."""
        self.model = model
        self.watch = watch
        self.c = c = model.config
        self.w = model.weights
        rows = c.seq_len if rows is None else rows
        # (layer, rows, kv_dim)
        self.key_cache = np.zeros((c.n_layers, rows, c.kv_dim), dtype=np.float32)
        self.value_cache = np.zeros((c.n_layers, rows, c.kv_dim), dtype=np.float32)

    def forward(self, token: int, pos: int) -> np.ndarray:
        c, w, watch = self.c, self.w, self.watch
        hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
        x = embedding(w["token_embedding"], token)  # (dim,)
        cos, sin = rope_cos_sin(pos, c.dim, hs, c.rope_theta)
        scale = np.float32(1.0 / np.sqrt(hs))
        for l in range(c.n_layers):
            xb = rmsnorm(x, w["rms_att"][l], c.norm_eps)
            q, k, v = matvecs(xb, w["wq"][l], w["wk"][l], w["wv"][l], watch=watch)  # (dim,), (kv_dim,), (kv_dim,)
            q = rotate_pairs(q, cos, sin)
            k = rotate_pairs(k, cos[: c.kv_dim // 2], sin[: c.kv_dim // 2])
            self.key_cache[l, pos] = k
            self.value_cache[l, pos] = v

            # grouped-query attention: query head h reads KV head h // kv_mul
            keys = self.key_cache[l, : pos + 1].reshape(pos + 1, c.n_kv_heads, hs)
            values = self.value_cache[l, : pos + 1].reshape(pos + 1, c.n_kv_heads, hs)
            qh = q.reshape(c.n_heads, hs)
            att_out = np.empty((c.n_heads, hs), dtype=np.float32)
            for h in range(c.n_heads):
                kvh = h // kv_mul
                scores = (keys[:, kvh, :] @ qh[h]) * scale  # (pos+1,)
                att_out[h] = softmax(scores) @ values[:, kvh, :]
            x = x + matvecs(att_out.reshape(c.dim), w["wo"][l], watch=watch)[0]

            xb = rmsnorm(x, w["rms_ffn"][l], c.norm_eps)
            gate, up = matvecs(xb, w["w1"][l], w["w3"][l], watch=watch)  # (hidden_dim,) each
            hidden = (gate / (np.float32(1.0) + np.exp(-gate))) * up
            x = x + matvecs(hidden, w["w2"][l], watch=watch)[0]

        x = rmsnorm(x, w["rms_final"], c.norm_eps)
        return matvecs(x, self.model.classifier, watch=watch)[0].astype(np.float32)  # (vocab,)

    def forward_batch(self, tokens: list[int], pos0: int, all_logits: bool = True) -> np.ndarray:
        """Positions pos0 .. pos0+T-1 at once (docs/port-contract.md, section 6): row t is
        forward(tokens[t], pos0 + t). Returns (T, vocab), or (1, vocab) for the last row only."""
        c, w, watch = self.c, self.w, self.watch
        hs, kv_mul, T = c.head_size, c.n_heads // c.n_kv_heads, len(tokens)
        end = pos0 + T
        x = np.stack([embedding(w["token_embedding"], t) for t in tokens])  # (T, dim)
        cos, sin = rope_cos_sin(np.arange(pos0, end), c.dim, hs, c.rope_theta)  # (T, dim/2)
        scale = np.float32(1.0 / np.sqrt(hs))
        # causal: row t (position pos0 + t) sees cache positions 0 .. pos0 + t
        future = np.arange(end)[None, :] > np.arange(pos0, end)[:, None]  # (T, end)
        for l in range(c.n_layers):
            xb = rmsnorm_rows(x, w["rms_att"][l], c.norm_eps)
            q, k, v = matmuls(xb, w["wq"][l], w["wk"][l], w["wv"][l], watch=watch)  # (T, dim), (T, kv_dim) x2
            q = rotate_pairs(q, cos, sin)
            k = rotate_pairs(k, cos[:, : c.kv_dim // 2], sin[:, : c.kv_dim // 2])
            self.key_cache[l, pos0:end] = k  # every row's K/V stored before any row attends
            self.value_cache[l, pos0:end] = v

            keys = self.key_cache[l, :end].reshape(end, c.n_kv_heads, hs)
            values = self.value_cache[l, :end].reshape(end, c.n_kv_heads, hs)
            qh = q.reshape(T, c.n_heads, hs)
            att_out = np.empty((T, c.n_heads, hs), dtype=np.float32)
            for h in range(c.n_heads):
                kvh = h // kv_mul
                scores = (qh[:, h, :] @ keys[:, kvh, :].T) * scale  # (T, end)
                scores[future] = -np.inf
                e = np.exp(scores - scores.max(axis=1, keepdims=True), dtype=np.float32)
                att_out[:, h, :] = (e / e.sum(axis=1, keepdims=True, dtype=np.float32)) @ values[:, kvh, :]
            x = x + matmuls(att_out.reshape(T, c.dim), w["wo"][l], watch=watch)[0]

            xb = rmsnorm_rows(x, w["rms_ffn"][l], c.norm_eps)
            gate, up = matmuls(xb, w["w1"][l], w["w3"][l], watch=watch)  # (T, hidden_dim) each
            hidden = (gate / (np.float32(1.0) + np.exp(-gate))) * up
            x = x + matmuls(hidden, w["w2"][l], watch=watch)[0]

        rows = x if all_logits else x[-1:]
        rows = rmsnorm_rows(rows, w["rms_final"], c.norm_eps)
        return matmuls(rows, self.model.classifier, watch=watch)[0].astype(np.float32)  # (T or 1, vocab)
