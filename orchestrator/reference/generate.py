"""Generation and logits runs, with the timings the statistics line reports."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .model import Transformer
from .sampler import Sampler
from .tokenizer import Tokenizer, safe_piece


@dataclass
class RunStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    positions: int = 0
    batch: int = 1
    ttft_s: float = 0.0
    prefill_positions: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_positions / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.generated_tokens - 1) / self.decode_s if self.generated_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass
class Generation:
    text: bytes
    stats: RunStats = field(default_factory=RunStats)


def clamp_steps(steps: int, seq_len: int) -> int:
    return seq_len if steps == 0 or steps > seq_len else steps


def batches(n: int, batch: int):
    """(start, end) of each batch of at most `batch` positions over 0 .. n-1."""
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]


def prefill(transformer, tokens: list[int], batch: int, all_logits: bool) -> np.ndarray:
    """Positions 0 .. len(tokens)-1 in batches (docs/port-contract.md, section 2): every row's
    logits (len, vocab), or the last row's only (1, vocab). A backend without forward_batch, or
    batch 1, runs run.c's one position at a time."""
    batched = getattr(transformer, "forward_batch", None)
    if batch <= 1 or batched is None:
        rows = [transformer.forward(t, pos) for pos, t in enumerate(tokens)]
        return np.stack(rows if all_logits else rows[-1:]).astype(np.float32)
    parts = [batched(tokens[s:e], s, all_logits) for s, e in batches(len(tokens), batch)]
    return np.concatenate(parts if all_logits else parts[-1:]).astype(np.float32)


def generate(transformer: Transformer, tokenizer: Tokenizer, sampler: Sampler, prompt: bytes,
             steps: int, ignore_bos: bool = False, emit=None, batch: int = 1) -> Generation:
    """run.c's loop with the prompt's positions batched (`batch` 1: run.c's loop exactly); `emit`
    receives each printed piece as it is produced."""
    steps = clamp_steps(steps, transformer.c.seq_len)
    prompt_tokens = tokenizer.encode(prompt, bos=True, eos=False)
    stats = RunStats(prompt_tokens=len(prompt_tokens), batch=batch)
    out = []
    token = prompt_tokens[0]
    start = time.perf_counter()
    n_prefill = min(len(prompt_tokens), steps)
    last = prefill(transformer, prompt_tokens[:n_prefill], batch, all_logits=False)[0]
    stats.prefill_positions = n_prefill
    stats.prefill_s = time.perf_counter() - start
    first = None
    for pos in range(steps):
        # the prompt's forward passes were the prefill's; the last prompt position's logits are `last`
        logits = last if pos == n_prefill - 1 else transformer.forward(token, pos) if pos >= n_prefill else None
        stats.positions += 1
        if pos < len(prompt_tokens) - 1:
            nxt = prompt_tokens[pos + 1]
        else:
            nxt = sampler.sample(logits)
            stats.generated_tokens += 1
            if first is None:
                first = time.perf_counter()
        if nxt == tokenizer.bos and not ignore_bos:
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


def logits_for(transformer: Transformer, tokens: list[int], batch: int = 1) -> np.ndarray:
    """(len(tokens), vocab) float32: the logits after each position, in batches of `batch`."""
    return prefill(transformer, tokens, batch, all_logits=True).astype("<f4")
