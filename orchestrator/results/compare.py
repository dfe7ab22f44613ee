"""`invoke compare A.json B.json`: per cell, the change of a metric between two suites with its
95% interval, whether it is beyond the noise, and an exit code that can gate CI: non-zero when a
cell regressed by more than the threshold and the interval lies wholly beyond it (as
pytest-benchmark's --benchmark-compare-fail does)."""
from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from schemas.results import Suite

from .stats import geometric_mean, good_runs, ratio_ci, summarize

METRICS = {  # name: (how to read it off a run, whether higher is better)
    "tok_s": (lambda r: r.tok_s, True),
    "wall_s": (lambda r: r.wall_s, False),
    "rss_mib": (lambda r: r.max_rss_kib / 1024, False),
}


@dataclass(frozen=True)
class Verdict:
    rows: list[dict]
    geomean: float | None
    regressions: list[str]


def _key(cell):
    return (cell.port, cell.model.name, cell.model.origin, cell.model.weight_type, cell.threads, cell.test_name)


def compare(a: Suite, b: Suite, metric: str = "tok_s", threshold: float = 0.05) -> Verdict:
    read, higher_better = METRICS[metric]
    cells_a = {_key(c): c for c in a.cells}
    rows, ratios, regressions = [], [], []
    for cb in b.cells:
        ca = cells_a.get(_key(cb))
        if ca is None:
            continue
        xa = [v for v in map(read, good_runs(ca)) if v]
        xb = [v for v in map(read, good_runs(cb)) if v]
        sa, sb, r = summarize(xa), summarize(xb), ratio_ci(xa, xb)
        row = {"port": cb.port, "model": cb.label, "threads": cb.threads}
        if not sa or not sb or r is None:
            rows.append({**row, "A": "-", "B": "-", "B/A [95% CI]": "-", "verdict": "no data"})
            continue
        ratios.append(r.value)
        worse = r.high < 1 if higher_better else r.low > 1  # NaN bounds (n < 2) compare False
        better = r.low > 1 if higher_better else r.high < 1
        verdict = "worse" if worse else "better" if better else "within noise"
        # beyond the threshold as well as beyond the noise: the whole interval past 1 -/+ threshold
        if (r.high < 1 - threshold) if higher_better else (r.low > 1 + threshold):
            verdict = f"REGRESSION beyond {100 * threshold:.0f}%"
            regressions.append(f"{cb.port} {cb.label} j={cb.threads}: {r.fmt()}")
        rows.append({**row, "A": sa.fmt(), "B": sb.fmt(), "B/A [95% CI]": r.fmt(), "verdict": verdict})
    return Verdict(rows, geometric_mean(ratios), regressions)


def render(a: Suite, b: Suite, verdict: Verdict, metric: str) -> str:
    lines = [f"A = {a.suite_id} ({a.host.git_commit[:12]}), B = {b.suite_id} ({b.host.git_commit[:12]}), "
             f"metric {metric}"]
    if a.host.cpu_model != b.host.cpu_model:
        lines.append(f"warning: different hosts ({a.host.cpu_model} vs {b.host.cpu_model})")
    lines.append(tabulate(verdict.rows, headers="keys") if verdict.rows else "no cells in common")
    if verdict.geomean:
        lines.append(f"geometric mean of B/A: {verdict.geomean:.3f}x")
    for r in verdict.regressions:
        lines.append(f"regression: {r}")
    return "\n".join(lines)
