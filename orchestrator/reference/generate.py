"""Generation and logits runs, with the timings the statistics line reports."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .model import Transformer
from .sampler import Sampler
from .tokenizer import BOS, Tokenizer, safe_piece


@dataclass
class RunStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    positions: int = 0
    ttft_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.generated_tokens - 1) / self.decode_s if self.generated_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass
class Generation:
    text: bytes
    stats: RunStats = field(default_factory=RunStats)


def clamp_steps(steps: int, seq_len: int) -> int:
    return seq_len if steps == 0 or steps > seq_len else steps


def generate(transformer: Transformer, tokenizer: Tokenizer, sampler: Sampler, prompt: bytes,
             steps: int, ignore_bos: bool = False, emit=None) -> Generation:
    """run.c's loop; `emit` receives each printed piece as it is produced."""
    steps = clamp_steps(steps, transformer.c.seq_len)
    prompt_tokens = tokenizer.encode(prompt, bos=True, eos=False)
    stats = RunStats(prompt_tokens=len(prompt_tokens))
    out = []
    token = prompt_tokens[0]
    start = time.perf_counter()
    first = None
    for pos in range(steps):
        logits = transformer.forward(token, pos)
        stats.positions += 1
        if pos < len(prompt_tokens) - 1:
            nxt = prompt_tokens[pos + 1]
        else:
            nxt = sampler.sample(logits)
            stats.generated_tokens += 1
            if first is None:
                first = time.perf_counter()
        if nxt == BOS and not ignore_bos:
            break
        piece = safe_piece(tokenizer.decode(token, nxt))
        out.append(piece)
        if emit:
            emit(piece)
        token = nxt
    end = time.perf_counter()
    stats.ttft_s = (first if first is not None else end) - start
    stats.decode_s = end - first if first is not None else 0.0
    return Generation(b"".join(out) + b"\n", stats)


def logits_for(transformer: Transformer, tokens: list[int]) -> np.ndarray:
    """(len(tokens), vocab) float32: the logits after each position."""
    return np.stack([transformer.forward(t, pos) for pos, t in enumerate(tokens)]).astype("<f4")
