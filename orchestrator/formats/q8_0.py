"""GGUF's Q8_0 weights (ggml type 8): blocks of 32 int8 values sharing one fp16 scale.

A Q8_0 tensor stays in the bytes it was read from (a numpy view of the file's blocks), so a model
loads without dequantizing; `quantize` is the converter's side, llama.cpp's reference quantizer
(`quantize_row_q8_0_ref`), byte for byte what the `gguf` package writes. The arithmetic of a
matrix-vector product with these blocks is the reference core's (orchestrator/reference/q8.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GGML_TYPE = 8
BLOCK = 32  # values per block
BLOCK_BYTES = 34  # fp16 scale + 32 int8
# one stored block, no padding: d is fp16 little-endian, then the 32 quants
BLOCK_DTYPE = np.dtype([("d", "<f2"), ("qs", "i1", (BLOCK,))])
assert BLOCK_DTYPE.itemsize == BLOCK_BYTES


def nbytes(rows: int, cols: int) -> int:
    """Bytes of a (rows, cols) Q8_0 matrix; cols must be a multiple of BLOCK."""
    return rows * (cols // BLOCK) * BLOCK_BYTES


@dataclass(frozen=True, eq=False)
class Q8Tensor:
    """A (rows, cols) matrix as Q8_0 blocks: row r is blocks[r, 0..cols/32-1]."""
    blocks: np.ndarray  # (rows, cols // 32) of BLOCK_DTYPE

    @classmethod
    def from_buffer(cls, data, offset: int, rows: int, cols: int) -> "Q8Tensor":
        flat = np.frombuffer(data, dtype=BLOCK_DTYPE, count=rows * (cols // BLOCK), offset=offset)
        return cls(flat.reshape(rows, cols // BLOCK))

    @property
    def shape(self) -> tuple[int, int]:
        rows, nb = self.blocks.shape
        return rows, nb * BLOCK

    @property
    def d(self) -> np.ndarray:
        """(rows, blocks) fp16 scales."""
        return self.blocks["d"]

    @property
    def qs(self) -> np.ndarray:
        """(rows, blocks, 32) int8 quants."""
        return self.blocks["qs"]

    @property
    def nbytes(self) -> int:
        return self.blocks.size * BLOCK_BYTES

    def row(self, r: int) -> np.ndarray:
        """Row r dequantized: fp32(d) * q, exact in float32 (an 11-bit scale times a 7-bit integer)."""
        b = self.blocks[r]
        return (b["d"].astype(np.float32)[:, None] * b["qs"].astype(np.float32)).reshape(-1)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.shape
        return (self.d.astype(np.float32)[..., None] * self.qs.astype(np.float32)).reshape(rows, cols)

    def tobytes(self) -> bytes:
        return np.ascontiguousarray(self.blocks).tobytes()


def quantize(x) -> Q8Tensor:
    """llama.cpp's quantize_row_q8_0_ref on every row: d = max|x| / 127 in float32, id = 1/d (0 when
    d is 0), q = round-half-away-from-zero(x * id), and d stored as fp16 rounded to nearest even."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % BLOCK:
        raise ValueError(f"Q8_0 needs a matrix whose rows are a multiple of {BLOCK} long, got shape {x.shape}")
    rows, cols = x.shape
    b = x.reshape(rows, cols // BLOCK, BLOCK)
    d = np.abs(b).max(axis=2) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = b * inv[..., None]
    # C's roundf; done in float64, where |v| + 0.5 is exact (in float32, 0.49999997 + 0.5 rounds up to 1)
    q = np.copysign(np.floor(np.abs(v).astype(np.float64) + 0.5), v)
    blocks = np.empty((rows, cols // BLOCK), dtype=BLOCK_DTYPE)
    blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q.astype(np.int8)
    return Q8Tensor(blocks)


def eligible(shape: tuple[int, ...]) -> bool:
    """Whether the converter writes a tensor of this shape as Q8_0: a matrix whose rows are a
    multiple of 32 long. Norms (vectors) and rows of other lengths stay F32, as in llama.cpp's
    converter."""
    return len(shape) == 2 and shape[1] % BLOCK == 0
