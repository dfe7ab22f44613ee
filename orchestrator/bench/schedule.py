"""The order in which runs happen.

Cells that are compared with each other (same model, same thread count) form a block; inside a
block the ports take turns run by run (A B C A B C ...), so that a noisy neighbour or thermal
drift hurts every port alike instead of whichever happened to run last.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    block: int
    cell: int  # index into the block's cells
    kind: str  # "warmup" or "run"
    index: int  # 0-based within its kind


def interleave(n_cells: int, warmup: int, runs: int, block: int = 0) -> list[Slot]:
    slots = [Slot(block, c, "warmup", i) for i in range(warmup) for c in range(n_cells)]
    slots += [Slot(block, c, "run", i) for i in range(runs) for c in range(n_cells)]
    return slots
