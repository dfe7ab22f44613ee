"""run.c's sampler: argmax, multinomial and top-p, driven by llama2.c's xorshift RNG so that one
seed gives the same draws in every port (docs/port-contract.md, section 7)."""
from __future__ import annotations

import numpy as np

from .model import softmax

MASK64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def next_f32(self) -> np.float32:
        return np.float32(self.next_u32() >> 8) / np.float32(16777216.0)


def sample_mult(probs: np.ndarray, coin: np.float32) -> int:
    cdf = np.cumsum(probs, dtype=np.float32)  # sequential float32 sums, as a C loop
    hit = np.flatnonzero(coin < cdf)
    return int(hit[0]) if hit.size else len(probs) - 1


def sample_topp(probs: np.ndarray, topp: float, coin: np.float32) -> int:
    cutoff = (np.float32(1.0) - np.float32(topp)) / np.float32(len(probs) - 1)
    ids = np.flatnonzero(probs >= cutoff)
    if ids.size == 0:  # a flat distribution and a tiny top-p: the nucleus is the most likely id
        return int(np.argmax(probs))
    order = np.lexsort((ids, -probs[ids]))  # probability descending, then id ascending
    ids = ids[order]
    cdf = np.cumsum(probs[ids], dtype=np.float32)
    over = np.flatnonzero(cdf > np.float32(topp))
    last = int(over[0]) if over.size else len(ids) - 1
    r = coin * cdf[last]
    hit = np.flatnonzero(r < cdf[: last + 1])
    return int(ids[hit[0]]) if hit.size else int(ids[last])


class Sampler:
    def __init__(self, temperature: float, topp: float, seed: int):
        self.temperature = np.float32(temperature)
        self.topp = topp
        self.rng = Rng(seed)

    def sample(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))  # first maximum
        probs = softmax((logits / self.temperature).astype(np.float32))
        coin = self.rng.next_f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(probs, coin)
        return sample_topp(probs, self.topp, coin)
