"""A progress bar with the current cell and an estimate of the time left.

The estimate weights every run still to come by its expected cost rather than averaging the runs
so far: a batch-1 decode step reads every weight once, so a run costs about
`weight bytes x steps / threads` (a first guess: threads rarely scale perfectly). The seconds
per unit of cost come from the runs already finished, per thread count where that count has
finished runs and over all finished runs otherwise; before the first run ends, from a prior
(the host's read bandwidth) when one is given.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass


PREFILL_DISCOUNT = 16  # a batched prefill reads each weight once per batch: a rough guess of its speed-up


def run_cost(weight_bytes: int, steps: int, threads: int, prefill: bool = False) -> float:
    """Expected cost of one run: bytes read per token x tokens, shared by the threads (a prefill's
    tokens cost a fraction of a decoded one's; the estimate only orders the progress line)."""
    return weight_bytes * steps / max(threads, 1) / (PREFILL_DISCOUNT if prefill else 1)


@dataclass(frozen=True)
class Planned:
    """The runs one cell still has to make, each of the same expected cost."""
    key: tuple
    runs: int
    cost: float
    threads: int = 1


class Progress:
    """`planned` is a run count (every run costs the same) or the cells to come; `step` is called as
    each run starts, `skip` for each run of a failed cell that will not be made."""

    def __init__(self, planned, stream=sys.stderr, width: int = 24, prior_s_per_cost: float | None = None,
                 clock=time.monotonic):
        if isinstance(planned, int):
            planned = [Planned(("run",), planned, 1.0)]
        self.cells = {p.key: p for p in planned}
        self.left = {p.key: p.runs for p in planned}  # runs not yet started
        self.total = max(sum(self.left.values()), 1)
        self.stream, self.width, self.prior, self.clock = stream, width, prior_s_per_cost, clock
        self.count = 0
        self.start = clock()
        self.tty = getattr(stream, "isatty", lambda: False)()
        self._current = None  # (key, started at) of the run in progress
        self._spent = {}  # threads -> [seconds, cost] of finished runs

    # ------------------------------------------------------------ bookkeeping
    def _key(self, key):
        if key is None:
            # the unkeyed form (a plain count): the first cell with runs left
            key = next((k for k, n in self.left.items() if n), next(iter(self.cells)))
        return key

    def _finish_current(self, now: float) -> None:
        if self._current is None:
            return
        key, started = self._current
        cell = self.cells[key]
        spent = self._spent.setdefault(cell.threads, [0.0, 0.0])
        spent[0] += now - started
        spent[1] += cell.cost
        self._current = None

    def rate(self, threads: int) -> float | None:
        """Seconds per unit of cost: from finished runs at this thread count, else all finished runs,
        else the prior."""
        seconds, cost = self._spent.get(threads, (0.0, 0.0))
        if cost > 0:
            return seconds / cost
        seconds = sum(s for s, _ in self._spent.values())
        cost = sum(c for _, c in self._spent.values())
        return seconds / cost if cost > 0 else self.prior

    def eta_seconds(self) -> float | None:
        """Expected seconds until every planned run has finished (the run in progress included,
        less the time it has already taken); None when there is nothing to go on yet."""
        now = self.clock()
        left = 0.0
        for key, n in self.left.items():
            cell = self.cells[key]
            r = self.rate(cell.threads) if n else 0.0
            if r is None:
                return None
            left += r * cell.cost * n
        if self._current is not None:
            key, started = self._current
            r = self.rate(self.cells[key].threads)
            if r is None:
                return None
            left += max(r * self.cells[key].cost - (now - started), 0.0)
        return left

    def _done_fraction(self) -> float:
        total = sum(c.cost * c.runs for c in self.cells.values()) or 1.0
        left = sum(self.cells[k].cost * n for k, n in self.left.items())
        if self._current is not None:
            left += self.cells[self._current[0]].cost
        return min(max(1 - left / total, 0.0), 1.0)

    # ------------------------------------------------------------ the interface
    def _eta(self) -> str:
        left = self.eta_seconds()
        if left is None:
            return "?"
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def step(self, label: str, key=None) -> None:
        now = self.clock()
        self._finish_current(now)
        key = self._key(key)
        if self.left.get(key, 0) > 0:
            self.left[key] -= 1
        self._current = (key, now)
        self.count += 1
        filled = int(self.width * self._done_fraction())
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total} {label}  ETA {self._eta()}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def skip(self, key=None) -> None:
        key = self._key(key)
        if self.left.get(key, 0) > 0:
            self.left[key] -= 1
        self.total = max(self.total - 1, 1)

    def done(self) -> None:
        self._finish_current(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
