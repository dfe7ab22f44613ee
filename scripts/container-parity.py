"""A benchmark cell in the container against the same cell run natively (the container parity check):
the port's own decode rate, round by round, the order alternating, as one paired ratio with its
95% interval per thread count. The cell is the one `invoke bench` would run (greedy, -e 1).

    .venv/bin/python scripts/container-parity.py --image polyllama:<commit> --port c \\
        --model stories110M --threads 1,2 --rounds 5 --steps 128
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate  # noqa: E402

from orchestrator.app import container_engine  # noqa: E402
from orchestrator.process import execute  # noqa: E402
from orchestrator.bench.measure import CellSpec  # noqa: E402
from orchestrator.bench.overhead import decode_rate  # noqa: E402
from orchestrator.models.store import Store  # noqa: E402
from orchestrator.models.synth import ensure  # noqa: E402
from orchestrator.ports.discover import select, tool_env  # noqa: E402
from orchestrator.results.stats import paired_ratio  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--port", default="c")
    ap.add_argument("--model", default="stories110M")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=128)
    a = ap.parse_args()
    from orchestrator.containers.engine import ContainerRunner

    [port] = select(a.port)
    r = ensure(Store(), a.model)
    rows = []
    with container_engine():
        runner = ContainerRunner.connect(a.image)
        for t in (int(x) for x in a.threads.split(",")):
            argv = CellSpec.greedy(port, r, t, a.steps).argv()
            native, boxed = [], []
            for i in range(a.rounds):
                for side in ("native", "container") if i % 2 == 0 else ("container", "native"):
                    p = (execute(argv, cwd=port.dir, env=tool_env(), timeout=3600) if side == "native"
                         else runner.execute(argv, cwd=port.dir, timeout=3600, threads=t))
                    rate = decode_rate(p.stderr) if p.returncode == 0 else None
                    if rate is None:
                        print(f"error: {side} run failed: {p.stderr.strip()[-200:]}", file=sys.stderr)
                        return 1
                    (native if side == "native" else boxed).append(rate)
                print(f"-j {t} round {i + 1}: native {native[-1]:.1f}, container {boxed[-1]:.1f} tok/s", flush=True)
            ratio = paired_ratio(boxed, native)
            rows.append([f"{a.port} {a.model} ({r.origin}) -j {t}", f"{statistics.median(native):.1f}",
                         f"{statistics.median(boxed):.1f}", ratio.fmt(), ratio.n])
    print(tabulate(rows, headers=["cell", "native median tok/s", "container median tok/s",
                                  "container/native [95% CI]", "n"]))
    return 0


if __name__ == "__main__":
    from orchestrator.errors import PolyllamaError
    try:
        sys.exit(main())
    except PolyllamaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
