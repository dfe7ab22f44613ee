"""What a correct port may do differently from the reference on a Q8_0 model, and no more.

Q8_0 rounds every activation that enters a product to an integer. Ports sum in their own float32
order, so an activation that lies within that noise of a rounding tie can round the other way in a
port (one step in one q, or one fp16 step in a block's scale). From there the two runs part by
the size of the quantization itself, about 1% of the logits, and more roundings differ downstream.
So the reference records, while it computes what a port must match, where its own roundings were
that close (docs/port-contract.md, section 8):
- the logits check feeds tokens chosen so that no rounding at any position comes near a tie, as
  far as such tokens are found: at those positions a port must match as tightly as in float32;
- greedy text may part from the reference's only at a step that follows a near tie and whose two
  best logits are closer than the Q8_0 tolerance allows to separate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reference import Transformer
from ..reference.q8 import ACTIVATION_NOISE, tie_margin

TIE_FREE_TRIES = 600  # candidate tokens per position (stories260K needs about 40 on average, rarely 300)


class _NearTie(Exception):
    pass


def _refuse_near_ties(x) -> None:
    if tie_margin(x) < ACTIVATION_NOISE:
        raise _NearTie


def tie_free_ids(model, default: list[int], tries: int = TIE_FREE_TRIES) -> tuple[list[int], int]:
    """(ids, n): ids[:n] were chosen so that every quantization of their forward passes stays
    clear of rounding ties (each the default id when it does, else the first that does of a fixed
    sequence of candidates); from the first position where none of `tries` candidates does, the
    default ids follow. A near tie aborts a candidate's forward pass early, so a model where none
    exists (the stories15M shape: 10 000 roundings per position) costs little to give up on."""
    vocab = model.config.vocab_size
    probe = Transformer(model, watch=_refuse_near_ties)
    ids: list[int] = []
    for pos, first in enumerate(default):
        for k in range(tries):
            token = (first + 97 * k) % vocab
            try:
                probe.forward(token, pos)  # a rejected try leaves position pos to be overwritten
            except _NearTie:
                continue
            ids.append(token)
            break
        else:
            return ids + default[pos:], pos
    return ids, len(ids)


@dataclass(frozen=True)
class Step:
    """One position of the reference's own generation."""
    end: int  # byte offset in the text where this step's piece ends
    near_tie: bool  # some rounding of this forward pass was within the noise of a tie
    gap: float  # its largest logit minus the second largest
    scale: float  # 1 + max |logit|: what the tolerance is relative to


class Watched:
    """The reference transformer, recording each position's closest rounding and logit gap."""

    def __init__(self, model):
        self.inner = Transformer(model, watch=self._see)
        self.c = self.inner.c
        self.margin = np.inf
        self.positions: list[tuple[bool, float, float]] = []

    def _see(self, x) -> None:
        self.margin = min(self.margin, tie_margin(x))

    def forward(self, token: int, pos: int) -> np.ndarray:
        self.margin = np.inf
        logits = self.inner.forward(token, pos)
        second, first = np.partition(logits, -2)[-2:]
        self.positions.append((self.margin < ACTIVATION_NOISE, float(first - second),
                               1.0 + float(np.abs(logits).max())))
        return logits


def steps_of(watched: Watched, pieces: list[bytes]) -> list[Step]:
    """Each printed piece with the position that chose it (run.c prints one piece per position)."""
    out, end = [], 0
    for (near, gap, scale), piece in zip(watched.positions, pieces):
        end += len(piece)
        out.append(Step(end, near, gap, scale))
    return out


def parting(expected: bytes, got: bytes, steps: list[Step], rtol: float) -> tuple[int, bool]:
    """(step, allowed): the step whose piece holds the first byte where the texts differ, and
    whether a correct port may part there: the reference met a near tie at or before it, and the
    step's two best logits lie within twice the tolerance of each other."""
    n = min(len(expected), len(got))
    first = next((i for i in range(n) if expected[i] != got[i]), n)
    step = next((i for i, s in enumerate(steps) if first < s.end), len(steps) - 1)
    if step < 0:
        return 0, False
    s = steps[step]
    allowed = any(t.near_tie for t in steps[:step + 1]) and s.gap <= 2 * rtol * s.scale
    return step, allowed
