"""Tables of a suite: one per model and weight type (the study's layout), pyperf-style relative
speeds with a geometric-mean row, and, when the suite has several weight types, each port's
speed-up from f32 to the other types side by side."""
from __future__ import annotations

from tabulate import tabulate

from schemas.results import Cell, Suite

from . import summary
from .stats import busy_runs, geometric_mean, good_runs, metric, noise_notes, ratio_ci
from .summary import describe_peer, roofline

BASELINES = ("c", "python")


def baseline_port(suite: Suite) -> str | None:
    names = {c.port for c in suite.cells if c.status == "ok"}
    return next((b for b in BASELINES if b in names), None)


def _label(cell: Cell) -> str:
    return f"{cell.port} (peer)" if cell.role == "peer" else cell.port


def _flags(cell: Cell, roof: float | None) -> str:
    """Why a figure should be read with care: thread honesty, runs taken on a busy machine (left
    out of every figure), few runs or a wide spread, and a roofline the cell beat (the probe
    under-measured that level of the memory hierarchy)."""
    checks = {r.thread_check for r in cell.runs if r.ok} - {"ok", "unchecked"}
    flags = [f"threads:{c}" for c in sorted(checks)]
    if busy_runs(cell):
        flags.append(f"busy:{busy_runs(cell)}/{len(cell.runs)} left out")
    flags += noise_notes(metric(cell, "tok_s")) if cell.status == "ok" else []
    if roof and roof > 1:
        flags.append("above 100% of the roofline: a probe defect")
    if cell.peer_check is not None:
        flags.append(describe_peer(cell.peer_check))
    return ",".join(flags)


def _speed(suite: Suite, cell: Cell, base: str | None):
    """This cell's decode rate relative to the baseline port's in the same (model, threads), with
    a 95% interval (Welch on the log scale)."""
    if base is None:
        return None
    ref = next((c for c in suite.cells if c.port == base and c.label == cell.label
                and c.threads == cell.threads and c.status == "ok"), None)
    if ref is None:
        return None
    return ratio_ci([r.tok_s for r in good_runs(ref) if r.tok_s], [r.tok_s for r in good_runs(cell) if r.tok_s])


def model_rows(suite: Suite, model: str) -> list[dict]:
    base = baseline_port(suite)
    rows = []
    for cell in sorted((c for c in suite.cells if c.label == model), key=lambda c: (c.threads, c.port)):
        tok, wall, rss = metric(cell, "tok_s"), metric(cell, "wall_s"), metric(cell, "rss_mib")
        roof = roofline(suite, cell)
        speed = _speed(suite, cell, base)
        rows.append({
            "port": _label(cell),
            "threads": cell.threads,
            "tok/s": tok.fmt() if tok else "-",
            **({"TTFT s": ttft.fmt(3) if (ttft := metric(cell, "ttft_s")) else "-"} if cell.prefill else {}),
            "time/inference s": wall.fmt(3) if wall else "-",
            "peak MiB": f"{rss.max:.1f}" if rss else "-",
            "% roofline": (f"{100 * roof:.0f}%" + (" (probe defect)" if roof > 1 else "")) if roof else "-",
            f"vs {base} [95% CI]": speed.fmt() if speed else "-",
            "runs": f"{len(good_runs(cell))}/{len(cell.runs)}",
            "status": cell.status if cell.status == "ok" else f"{cell.status}: {cell.reason}"[:70],
            "flags": _flags(cell, roof),
        })
    return rows


def model_title(suite: Suite, model: str) -> str:
    """`model` is a Model.label: the name, with the weight type when it is not f32."""
    cell = next(c for c in suite.cells if c.label == model)
    m = cell.model
    return (f"{model} ({m.origin} weights, {m.tokenizer_origin or 'embedded'} tokenizer, {m.format}, "
            + (f"{cell.steps}-token prompt through the batched prefill, {cell.flops_per_token / 1e6:.0f} MFLOP per "
               f"position)" if cell.prefill else f"{m.weight_bytes / 1e6:.1f} MB read per token, {cell.steps} steps)"))


def relative_rows(suite: Suite) -> tuple[list[str], list[list[str]]]:
    """Rows: ports; columns: (model with its weight type, threads); last column: geometric mean of
    the speed-ups."""
    base = baseline_port(suite)
    if base is None:
        return [], []
    keys = sorted({(c.label, c.threads) for c in suite.cells}, key=lambda k: (k[0], k[1]))
    header = ["port"] + [f"{m} j={t}" for m, t in keys] + ["geomean"]
    rows = []
    for port in sorted({c.port for c in suite.cells}):
        ratios = []
        row = [port]
        for m, t in keys:
            cell = next((c for c in suite.cells if c.port == port and c.label == m and c.threads == t), None)
            r = _speed(suite, cell, base) if cell else None
            ratios.append(r.value if r else None)
            row.append(r.fmt() if r else "-")
        g = geometric_mean([r for r in ratios if r])
        row.append(f"{g:.2f}x" if g else "-")
        rows.append(row)
    return header, rows


def type_rows(suite: Suite) -> list[dict]:
    """Each port's decode rate per weight type side by side, and the speed-up over its own f32 cell
    of the same model and thread count (95% interval); empty for a suite of one weight type."""
    types = [t for t in suite.matrix.types if any(c.model.weight_type == t for c in suite.cells)]
    if len(types) < 2 or "f32" not in types:
        return []
    cells = {c.key: c for c in suite.cells if c.status == "ok"}
    rows = []
    for port, model, threads, test in sorted({(c.port, c.model.name, c.threads, c.test_name) for c in cells.values()},
                                             key=lambda k: (k[3], k[1], k[2], k[0])):
        f32 = cells.get((port, model, "f32", threads, test))
        row = {"port": port, "model": model, "test": test, "threads": threads,
               "f32 tok/s": (m.fmt() if (m := metric(f32, "tok_s")) else "-") if f32 else "-"}
        for t in types[1:]:
            other = cells.get((port, model, t, threads, test))
            tok = metric(other, "tok_s") if other else None
            ratio = ratio_ci([r.tok_s for r in good_runs(f32) if r.tok_s],
                             [r.tok_s for r in good_runs(other) if r.tok_s]) if f32 and other else None
            row[f"{t} tok/s"] = tok.fmt() if tok else "-"
            row[f"{t}/f32 [95% CI]"] = ratio.fmt() if ratio else "-"
        rows.append(row)
    return rows


def models_of(suite: Suite) -> list[str]:
    seen = []
    for c in suite.cells:
        if c.label not in seen:
            seen.append(c.label)
    return seen


def host_lines(suite: Suite) -> list[str]:
    h = suite.host
    bw = "; ".join(f"{p.bytes / 2**20:.1f} MiB x {p.threads} thread{'s' if p.threads > 1 else ''}: {p.gbs:.1f} GB/s"
                   for p in h.probes) or ", ".join(f"{t} threads: {g:.1f} GB/s" for t, g in sorted(h.bandwidth_gbs.items()))
    caches = ", ".join(f"{k} {v}" for k, v in h.caches.items())
    return [
        f"host: {h.cpu_model}, {h.logical_cores} logical cores ({h.physical_cores} physical), "
        f"{h.memory_bytes / 2**30:.1f} GiB, {h.os}",
        f"caches: {caches or 'unknown'}",
        f"memory read bandwidth (the roofline, per model size): {bw or 'not measured'}",
    ] + ([f"compute peaks (the roofline of pp cells): " + "; ".join(
        f"{p.kind} x {p.threads} thread{'s' if p.threads > 1 else ''}: {p.gops:.0f} G ops/s ({p.method})" for p in h.peaks)]
         if h.peaks else []) + [
        f"cpu governor {h.cpu_governor or 'not exposed'}, clock {f'{h.cpu_mhz:.0f} MHz' if h.cpu_mhz else 'not exposed'}",
        f"commit {h.git_commit[:12]}{' (dirty)' if h.git_dirty else ''}, suite {suite.suite_id}, "
        f"matrix {suite.matrix_name}" + (f", image {h.container_image}" if h.container_image else ""),
    ]


def summary_text(suite: Suite, gs: list[summary.Group], fmt: str = "simple") -> str:
    """The answer first: one sentence per cell, the ranking table, validation and probe defects."""
    lines = [summary.overall(suite, gs)] + [f"- {summary.sentence(g)}" for g in gs]
    lines.append(summary.validation_line(suite))
    defects = summary.probe_defects(suite)
    if defects:
        lines.append(f"probe defect: {len(defects)} cells above 100% of their roofline (the probe read slower "
                     f"than the port; no target is met by them): " + ", ".join(defects))
    table = tabulate(summary.rows(suite, gs), headers="keys", tablefmt=fmt) if gs else ""
    return "\n".join(lines) + ("\n\n" + table if table else "")


def render(suite: Suite, fmt: str = "simple") -> str:
    gs = summary.groups(suite)
    parts = [summary_text(suite, gs, fmt), "\n".join(host_lines(suite))]
    for model in models_of(suite):
        parts.append(f"{model_title(suite, model)}\n" + tabulate(model_rows(suite, model), headers="keys",
                                                                    tablefmt=fmt))
    speedups = type_rows(suite)
    if speedups:
        parts.append("weight types side by side (decode tok/s; the speed-up over the port's own f32 cell, 95% CI)\n"
                     + tabulate(speedups, headers="keys", tablefmt=fmt))
    header, rows = relative_rows(suite)
    if rows:
        parts.append(f"relative decode speed (tok/s vs {baseline_port(suite)}, 95% CI; geometric mean last)\n"
                     + tabulate(rows, headers=header, tablefmt=fmt))
    busy = sum(busy_runs(c) for c in suite.cells)
    if busy:
        parts.append(f"warning: {busy} runs were taken while other processes used the CPU; they are kept in "
                     f"the result file and left out of every figure above")
    return "\n\n".join(parts)
