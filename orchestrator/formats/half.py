"""GGUF's 16-bit weights: F16 (ggml type 1, IEEE binary16) and BF16 (ggml type 30, the top half of
an IEEE float32), 2 bytes a value, row after row.

A 16-bit tensor stays in the bytes it was read from, as a Q8_0 one does; converting a value to
float32 is exact in both, and a product with such a weight is the float32 product of the widened
values (docs/port-contract.md, "GGUF F16 and BF16").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GGML_TYPES = {"f16": 1, "bf16": 30}
KINDS = {v: k for k, v in GGML_TYPES.items()}


def bf16_bits(x) -> np.ndarray:
    """float32 -> BF16 bits, to nearest with ties to even; a NaN stays a (quiet) NaN."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def bf16_to_f32(bits) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True, eq=False)
class HalfTensor:
    """A (rows, cols) matrix of 16-bit values: `bits` is the file's uint16 view."""
    bits: np.ndarray  # (rows, cols) uint16
    kind: str  # "f16" or "bf16"

    @classmethod
    def from_buffer(cls, data, offset: int, rows: int, cols: int, kind: str) -> "HalfTensor":
        flat = np.frombuffer(data, dtype="<u2", count=rows * cols, offset=offset)
        return cls(flat.reshape(rows, cols), kind)

    @classmethod
    def from_f32(cls, x, kind: str) -> "HalfTensor":
        """What the converter writes: F16 numpy's (= IEEE) rounding, BF16 llama.cpp's and the gguf
        package's (ties to even, NaN kept)."""
        x = np.asarray(x, dtype=np.float32)
        if kind == "f16":
            with np.errstate(over="ignore"):  # beyond 65504 is infinity, as in the gguf package
                return cls(x.astype(np.float16).view(np.uint16), kind)
        return cls(bf16_bits(x), kind)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape

    @property
    def nbytes(self) -> int:
        return 2 * self.bits.size

    def row(self, r: int) -> np.ndarray:
        return self._f32(self.bits[r])

    def dequantize(self) -> np.ndarray:
        return self._f32(self.bits)

    def _f32(self, bits) -> np.ndarray:
        if self.kind == "f16":
            return np.asarray(bits).view(np.float16).astype(np.float32)
        return bf16_to_f32(bits)

    def tobytes(self) -> bytes:
        return np.ascontiguousarray(self.bits).astype("<u2").tobytes()


def nbytes(rows: int, cols: int) -> int:
    return 2 * rows * cols
