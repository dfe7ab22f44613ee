"""Matrix-vector products with Q8_0 weights, as llama.cpp's CPU backend computes them
(docs/port-contract.md, "GGUF Q8_0"): the activation is quantized to Q8_0 too, the dot product of
each block is an exact integer, and only the scaling and the sum over blocks are float32.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..formats import Q8Tensor
from ..formats.q8_0 import BLOCK

# How far two honest float32 evaluations (any summation order) may put an activation apart,
# relative to its block's largest magnitude: 5x the largest difference measured between this
# reference and a float64 evaluation and a sequential-sum float32 one on stories260K and the
# stories15M shape (2e-6). Closer than this to a rounding tie, a port may round the other way.
ACTIVATION_NOISE = 1e-5


class QuantizedActivation(NamedTuple):
    qx: np.ndarray  # (blocks, 32) int8
    dx: np.ndarray  # (blocks,) float32: the fp16-rounded scale, as the dot product uses it


def quantize_activation(x: np.ndarray) -> QuantizedActivation:
    """llama.cpp's SIMD quantize_row_q8_0 (AVX2, NEON): unlike the weights' reference quantizer it
    multiplies by 127 / amax rather than by 1 / d, and rounds ties to even (the vector
    instructions' rounding mode), so the same x can quantize one step apart in the two."""
    b = np.asarray(x, dtype=np.float32).reshape(-1, BLOCK)
    amax = np.abs(b).max(axis=1)
    dx = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax == 0, np.float32(0), np.float32(127) / amax).astype(np.float32)
    qx = np.rint(b * inv[:, None]).astype(np.int8)
    return QuantizedActivation(qx, dx)


def quantize_rows(x: np.ndarray) -> QuantizedActivation:
    """Each row of a (T, n) activation matrix quantized as one activation vector is: qx (T, blocks,
    32), dx (T, blocks). A batch changes the loop order, not the blocks."""
    x = np.asarray(x, dtype=np.float32)
    parts = [quantize_activation(row) for row in x]
    return QuantizedActivation(np.stack([p.qx for p in parts]), np.stack([p.dx for p in parts]))


ROWS_PER_CHUNK = 8  # bounds the (chunk, rows, blocks) int32 temporary of a classifier-sized product


def matmul(w: Q8Tensor, a: QuantizedActivation) -> np.ndarray:
    """(T, rows): row t is matvec(w, a[t]), computed with the same float32 operations."""
    dw = w.d.astype(np.float32)
    out = np.empty((a.qx.shape[0], w.qs.shape[0]), dtype=np.float32)
    for s in range(0, a.qx.shape[0], ROWS_PER_CHUNK):
        qx, dx = a.qx[s:s + ROWS_PER_CHUNK], a.dx[s:s + ROWS_PER_CHUNK]
        isum = np.einsum("rbi,tbi->trb", w.qs, qx, dtype=np.int32)
        out[s:s + ROWS_PER_CHUNK] = (isum.astype(np.float32) * (dw[None] * dx[:, None, :])).sum(axis=2, dtype=np.float32)
    return out


def matvec(w: Q8Tensor, a: QuantizedActivation, scales: np.ndarray | None = None) -> np.ndarray:
    """out[r] = sum over blocks b of float(isum[r, b]) * (fp32(d[r, b]) * dx[b]), where isum is the
    block's dot product of the int8 quants, exact in int32. `scales`: w's fp32(d), when cached."""
    isum = np.einsum("rbi,bi->rb", w.qs, a.qx, dtype=np.int32)  # |isum| <= 32 * 127 * 127: exact
    dw = w.d.astype(np.float32) if scales is None else scales
    return (isum.astype(np.float32) * (dw * a.dx)).sum(axis=1, dtype=np.float32)


def tie_margin(x: np.ndarray) -> float:
    """How far the quantization of x is from changing, relative to each block's amax: the least of
    (distance of x * 127 / amax to a half-integer) / 127 and the relative distance of amax / 127
    to an fp16 rounding midpoint. Below ACTIVATION_NOISE, another float32 order may quantize x
    differently (one step in a q, or one fp16 step in a scale)."""
    b = np.asarray(x, dtype=np.float32).reshape(-1, BLOCK)
    amax = np.abs(b).max(axis=1)
    live = amax > 0  # an all-zero block quantizes to zeros in any order
    if not live.any():
        return float("inf")
    b, amax = b[live], amax[live]
    v = np.abs(b * (np.float32(127) / amax)[:, None]).astype(np.float64)
    q_margin = np.abs(v - np.floor(v) - 0.5).min() / 127
    d = (amax / np.float32(127)).astype(np.float64)
    h = d.astype(np.float16)
    up = np.nextafter(h, np.float16(np.inf)).astype(np.float64)
    down = np.nextafter(h, np.float16(-np.inf)).astype(np.float64)
    h = h.astype(np.float64)
    mid = np.minimum(np.abs(d - (h + up) / 2), np.abs(d - (h + down) / 2))
    return float(min(q_margin, (mid / d).min()))
