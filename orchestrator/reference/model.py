"""The reference forward pass: run.c's algorithm in float32 numpy, one token at a time.

This is what every port is compared against, so it favours being obviously right over being
fast: one function per step of the transformer, the shapes in comments.
"""
from __future__ import annotations

import numpy as np

from ..formats import Model

EPS = np.float32(1e-5)


def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    ss = np.float32(np.dot(x, x) / np.float32(x.shape[0])) + EPS
    return (w * (x * np.float32(1.0 / np.sqrt(ss)))).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float32)
    return (e / e.sum(dtype=np.float32)).astype(np.float32)


def rope_cos_sin(pos: int, dim: int, head_size: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotation for each adjacent pair (i, i+1) of a dim-long vector."""
    head_dim = (np.arange(0, dim, 2) % head_size).astype(np.float32)
    freq = np.float32(1.0) / np.power(np.float32(10000.0), head_dim / np.float32(head_size))
    angle = (np.float32(pos) * freq).astype(np.float32)
    return np.cos(angle), np.sin(angle)


def rotate_pairs(vec: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    v0, v1 = vec[0::2], vec[1::2]
    out = np.empty_like(vec)
    out[0::2] = v0 * cos - v1 * sin
    out[1::2] = v0 * sin + v1 * cos
    return out


class Transformer:
    """Weights plus the run state (KV cache) of one sequence."""

    def __init__(self, model: Model):
        self.model = model
        self.c = c = model.config
        self.w = model.weights
        # (layer, seq_len, kv_dim)
        self.key_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=np.float32)
        self.value_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=np.float32)

    def forward(self, token: int, pos: int) -> np.ndarray:
        c, w = self.c, self.w
        hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
        x = np.array(w["token_embedding"][token], dtype=np.float32)  # (dim,)
        cos, sin = rope_cos_sin(pos, c.dim, hs)
        scale = np.float32(1.0 / np.sqrt(hs))
        for l in range(c.n_layers):
            xb = rmsnorm(x, w["rms_att"][l])
            q = w["wq"][l] @ xb  # (dim,)
            k = w["wk"][l] @ xb  # (kv_dim,)
            v = w["wv"][l] @ xb  # (kv_dim,)
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
            x = x + w["wo"][l] @ att_out.reshape(c.dim)

            xb = rmsnorm(x, w["rms_ffn"][l])
            gate = w["w1"][l] @ xb  # (hidden_dim,)
            up = w["w3"][l] @ xb  # (hidden_dim,)
            hidden = (gate / (np.float32(1.0) + np.exp(-gate))) * up
            x = x + w["w2"][l] @ hidden

        x = rmsnorm(x, w["rms_final"])
        return (self.model.classifier @ x).astype(np.float32)  # (vocab,)
