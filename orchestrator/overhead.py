"""The harness's own cost: the same command timed by our executor (with its psutil sampler) and
by hyperfine, alternately, so that both see the same machine."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from .errors import PolyllamaError
from .executor import execute
from .ports import tool_env


def hyperfine_once(argv: list[str], cwd, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "h.json"
        cmd = ["hyperfine", "--style", "none", "--runs", str(runs), "-N", "--export-json", str(out),
               " ".join(_quote(a) for a in argv)]
        r = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise PolyllamaError(f"hyperfine failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return json.loads(out.read_text())["results"][0]["times"]


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=," for c in arg) else "'" + arg.replace("'", "'\\''") + "'"


def measure_overhead(argv: list[str], cwd, rounds: int = 5) -> dict:
    if shutil.which("hyperfine") is None:
        raise PolyllamaError("hyperfine is not installed (apt-get install hyperfine)")
    ours, theirs = [], []
    for _ in range(rounds):
        theirs += hyperfine_once(argv, cwd, 1)
        r = execute(argv, cwd=cwd, env=tool_env(), timeout=3600)
        if r.returncode != 0:
            raise PolyllamaError(f"the command failed: {r.error_line}")
        ours.append(r.wall_s)
    a, b = statistics.median(ours), statistics.median(theirs)
    return {"harness_median_s": a, "hyperfine_median_s": b, "overhead": (a - b) / b,
            "harness_times": ours, "hyperfine_times": theirs}
