"""What one performance lever buys: every cell run with the lever off (an environment setting,
such as POLYLLAMA_HUGEPAGES=0) and on, round by round over all ports and cells, the order
alternating between rounds, so both sides of every pair see the same machine. The result is the
paired ratio on/off of the port's own decode rate with its interval (results.stats.paired_ratio).

Unlike `invoke bench`, nothing here is a benchmark result: it answers "did this change help",
and the before/after tables in docs/journal.md and the ports' READMEs come from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import PolyllamaError
from ..ports.discover import tool_env
from ..results.stats import Ratio, paired_ratio
from ..process import execute
from .overhead import decode_rate


@dataclass
class LeverCell:
    label: str  # "port model -j N"
    argv: list[str]
    cwd: str
    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)

    def ratio(self) -> Ratio | None:
        return paired_ratio(self.on, self.off)


def _rate(argv: list[str], cwd, off_env: dict[str, str], on: bool) -> float:
    env = {k: v for k, v in tool_env().items() if k not in off_env} if on else {**tool_env(), **off_env}
    r = execute(argv, cwd=cwd, env=env, timeout=3600)
    rate = decode_rate(r.stderr) if r.returncode == 0 else None
    if rate is None:
        raise PolyllamaError(f"{' '.join(argv[:2])} failed: {r.error_line or 'no statistics line'}")
    return rate


def measure_lever(cells: list[LeverCell], off_env: dict[str, str], rounds: int, log=print) -> list[LeverCell]:
    """Fills each cell's off/on samples; the lever is on when off_env's variables are unset."""
    for i in range(rounds):
        for cell in cells:
            for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
                getattr(cell, side).append(_rate(cell.argv, cell.cwd, off_env, on=side == "on"))
            log(f"round {i + 1}/{rounds}  {cell.label}: off {cell.off[-1]:.1f}, on {cell.on[-1]:.1f} tok/s")
    return cells


def to_json(cells: list[LeverCell], off_env: dict[str, str]) -> str:
    return json.dumps({"off_env": off_env, "cells": [
        {"cell": c.label, "argv": c.argv, "off_tok_s": c.off, "on_tok_s": c.on} for c in cells]}, indent=1)
