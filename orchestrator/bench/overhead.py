"""The harness's own cost: the same command timed by our executor and by `hyperfine -N`,
alternately round by round so that both see the same machine, over a small matrix of cells.

Both sides are compared on wall time (ours against hyperfine's) and on the port's own decode
rate (its statistics line under our executor against the same line under hyperfine, which
inherits the port's output into a file). Each round gives one paired ratio; the cost is the mean
of their logarithms with a Student-t interval, so a +0.5% [-0.3, +1.3] says what n allows.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PolyllamaError
from ..ports.discover import tool_env
from ..results.stats import paired_ratio
from ..process import STATS_PREFIX, execute


@dataclass(frozen=True)
class Timing:
    wall_s: float
    tok_s: float | None


def decode_rate(stderr: str) -> float | None:
    """The decode rate a port's statistics line reports, from its stderr (None without one)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(STATS_PREFIX)]
    if not lines:
        return None
    s = json.loads(lines[-1][len(STATS_PREFIX):])
    return (s["generated_tokens"] - 1) / s["decode_s"] if s.get("decode_s") else None


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=," for c in arg) else "'" + arg.replace("'", "'\\''") + "'"


def hyperfine_once(argv: list[str], cwd) -> Timing:
    """One run of argv under `hyperfine -N` (no shell); its output goes to files, not to us."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "h.json"
        cmd = ["hyperfine", "--style", "none", "--runs", "1", "-N", "--output", "inherit",
               "--export-json", str(out), " ".join(_quote(a) for a in argv)]
        with open(Path(tmp) / "stdout", "w") as so, open(Path(tmp) / "stderr", "w+") as se:
            r = subprocess.run(cmd, cwd=cwd, env=tool_env(), stdout=so, stderr=se, stdin=subprocess.DEVNULL)
            se.seek(0)
            stderr = se.read()
        if r.returncode != 0:
            raise PolyllamaError(f"hyperfine failed: {(stderr.strip().splitlines() or ['?'])[-1]}")
        return Timing(json.loads(out.read_text())["results"][0]["times"][0], decode_rate(stderr))


def harness_once(argv: list[str], cwd) -> Timing:
    r = execute(argv, cwd=cwd, env=tool_env(), timeout=3600)
    if r.returncode != 0:
        raise PolyllamaError(f"the command failed: {r.error_line}")
    return Timing(r.wall_s, decode_rate(r.stderr))


def measure_overhead(argv: list[str], cwd, rounds: int = 5) -> dict:
    """Paired rounds (hyperfine first in odd rounds, ours first in even ones)."""
    if shutil.which("hyperfine") is None:
        raise PolyllamaError("hyperfine is not installed (apt-get install hyperfine, brew install hyperfine)")
    ours, theirs = [], []
    for i in range(rounds):
        if i % 2 == 0:
            t = hyperfine_once(argv, cwd)
            h = harness_once(argv, cwd)
        else:
            h = harness_once(argv, cwd)
            t = hyperfine_once(argv, cwd)
        ours.append(h)
        theirs.append(t)
    wall = paired_ratio([o.wall_s for o in ours], [t.wall_s for t in theirs])
    rates = [(o.tok_s, t.tok_s) for o, t in zip(ours, theirs) if o.tok_s and t.tok_s]
    # a slower harness shows as a lower rate under it: the cost is theirs / ours
    tok = paired_ratio([t for _, t in rates], [o for o, _ in rates]) if rates else None
    return {"wall": wall, "tok_s": tok, "harness_times": [o.wall_s for o in ours],
            "hyperfine_times": [t.wall_s for t in theirs],
            "harness_tok_s": [o.tok_s for o in ours], "hyperfine_tok_s": [t.tok_s for t in theirs]}
