"""Tables of a suite: one per model (the study's layout), and pyperf-style relative speeds with a
geometric-mean row."""
from __future__ import annotations

from schemas.results import Cell, Suite

from .stats import geometric_mean, metric, roofline_share

BASELINES = ("c", "python")


def baseline_port(suite: Suite) -> str | None:
    names = {c.port for c in suite.cells if c.status == "ok"}
    return next((b for b in BASELINES if b in names), None)


def _label(cell: Cell) -> str:
    return f"{cell.port} (peer)" if cell.role == "peer" else cell.port


def _flags(cell: Cell) -> str:
    checks = {r.thread_check for r in cell.runs if r.ok} - {"ok", "unchecked"}
    return ",".join(f"threads:{c}" for c in sorted(checks))


def _speed(suite: Suite, cell: Cell, base: str | None) -> float | None:
    if base is None:
        return None
    ref = next((c for c in suite.cells if c.port == base and c.model.name == cell.model.name
                and c.threads == cell.threads and c.status == "ok"), None)
    a, b = metric(cell, "tok_s"), metric(ref, "tok_s") if ref else None
    return a.mean / b.mean if a and b else None


def model_rows(suite: Suite, model: str) -> list[dict]:
    base = baseline_port(suite)
    rows = []
    for cell in sorted((c for c in suite.cells if c.model.name == model), key=lambda c: (c.threads, c.port)):
        tok, wall, rss = metric(cell, "tok_s"), metric(cell, "wall_s"), metric(cell, "rss_mib")
        roof = roofline_share(tok.mean if tok else None, cell.model.weight_bytes,
                              suite.host.bandwidth_gbs.get(cell.threads))
        speed = _speed(suite, cell, base)
        rows.append({
            "port": _label(cell),
            "threads": cell.threads,
            "tok/s": tok.fmt() if tok else "-",
            "time/inference s": wall.fmt(3) if wall else "-",
            "peak MiB": f"{rss.max:.1f}" if rss else "-",
            "% roofline": f"{100 * roof:.0f}%" if roof else "-",
            f"vs {base}": f"{speed:.2f}x" if speed else "-",
            "runs": f"{sum(r.ok for r in cell.runs)}/{len(cell.runs)}",
            "status": cell.status if cell.status == "ok" else f"{cell.status}: {cell.reason}"[:70],
            "flags": _flags(cell),
        })
    return rows


def model_title(suite: Suite, model: str) -> str:
    cell = next(c for c in suite.cells if c.model.name == model)
    m = cell.model
    return (f"{model} ({m.origin} weights, {m.tokenizer_origin or 'embedded'} tokenizer, {m.format}, "
            f"{m.weight_bytes / 1e6:.1f} MB read per token, {cell.steps} steps)")


def relative_rows(suite: Suite) -> tuple[list[str], list[list[str]]]:
    """Rows: ports; columns: (model, threads); last column: geometric mean of the speed-ups."""
    base = baseline_port(suite)
    if base is None:
        return [], []
    keys = sorted({(c.model.name, c.threads) for c in suite.cells}, key=lambda k: (k[0], k[1]))
    header = ["port"] + [f"{m} j={t}" for m, t in keys] + ["geomean"]
    rows = []
    for port in sorted({c.port for c in suite.cells}):
        ratios = []
        row = [port]
        for m, t in keys:
            cell = next((c for c in suite.cells if c.port == port and c.model.name == m and c.threads == t), None)
            r = _speed(suite, cell, base) if cell else None
            ratios.append(r)
            row.append(f"{r:.2f}x" if r else "-")
        g = geometric_mean([r for r in ratios if r])
        row.append(f"{g:.2f}x" if g else "-")
        rows.append(row)
    return header, rows


def models_of(suite: Suite) -> list[str]:
    seen = []
    for c in suite.cells:
        if c.model.name not in seen:
            seen.append(c.model.name)
    return seen


def host_lines(suite: Suite) -> list[str]:
    h = suite.host
    bw = ", ".join(f"{t} thread{'s' if t > 1 else ''}: {g:.1f} GB/s" for t, g in sorted(h.bandwidth_gbs.items()))
    caches = ", ".join(f"{k} {v}" for k, v in h.caches.items())
    return [
        f"host: {h.cpu_model}, {h.logical_cores} logical cores ({h.physical_cores} physical), "
        f"{h.memory_bytes / 2**30:.1f} GiB, {h.os}",
        f"caches: {caches or 'unknown'}",
        f"memory read bandwidth ({h.bandwidth_probe_mib} MiB streamed): {bw or 'not measured'}",
        f"commit {h.git_commit[:12]}{' (dirty)' if h.git_dirty else ''}, suite {suite.suite_id}, "
        f"matrix {suite.matrix_name}" + (f", image {h.container_image}" if h.container_image else ""),
    ]


def render(suite: Suite, fmt: str = "simple") -> str:
    from tabulate import tabulate

    parts = ["\n".join(host_lines(suite))]
    for model in models_of(suite):
        parts.append(f"{model_title(suite, model)}\n" + tabulate(model_rows(suite, model), headers="keys",
                                                                    tablefmt=fmt))
    header, rows = relative_rows(suite)
    if rows:
        parts.append(f"relative decode speed (tok/s vs {baseline_port(suite)}; geometric mean last)\n"
                     + tabulate(rows, headers=header, tablefmt=fmt))
    return "\n\n".join(parts)
