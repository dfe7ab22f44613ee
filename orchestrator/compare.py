"""`invoke compare A.json B.json`: per cell, the change in tok/s and whether it is beyond the noise."""
from __future__ import annotations

from schemas.results import Suite

from .stats import geometric_mean, significant, summarize


def _key(cell):
    return (cell.port, cell.model.name, cell.model.origin, cell.threads)


def compare_rows(a: Suite, b: Suite) -> tuple[list[dict], float | None]:
    cells_a = {_key(c): c for c in a.cells}
    rows, ratios = [], []
    for cb in b.cells:
        ca = cells_a.get(_key(cb))
        if ca is None:
            continue
        xa = [r.tok_s for r in ca.runs if r.ok and r.tok_s]
        xb = [r.tok_s for r in cb.runs if r.ok and r.tok_s]
        sa, sb = summarize(xa), summarize(xb)
        if not sa or not sb:
            rows.append({"port": cb.port, "model": cb.model.name, "threads": cb.threads, "A tok/s": "-",
                         "B tok/s": "-", "change": "-", "verdict": "no data"})
            continue
        ratio = sb.mean / sa.mean
        ratios.append(ratio)
        if not significant(xa, xb):
            verdict = "within noise"
        else:
            verdict = "faster" if ratio > 1 else "slower"
        rows.append({"port": cb.port, "model": cb.model.name, "threads": cb.threads,
                     "A tok/s": sa.fmt(), "B tok/s": sb.fmt(), "change": f"{ratio:.3f}x", "verdict": verdict})
    return rows, geometric_mean(ratios)


def render(a: Suite, b: Suite) -> str:
    from tabulate import tabulate

    rows, g = compare_rows(a, b)
    lines = [f"A = {a.suite_id} ({a.host.git_commit[:12]}), B = {b.suite_id} ({b.host.git_commit[:12]})"]
    if a.host.cpu_model != b.host.cpu_model:
        lines.append(f"warning: different hosts ({a.host.cpu_model} vs {b.host.cpu_model})")
    lines.append(tabulate(rows, headers="keys") if rows else "no cells in common")
    if g:
        lines.append(f"geometric mean of B/A: {g:.3f}x")
    return "\n".join(lines)
