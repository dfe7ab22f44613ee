"""The generated part of docs/benchmarks.md: one current block per matrix, written from a committed
result file by `invoke report FILE --docs docs/benchmarks.md`, never typed by hand.

A block sits between two HTML comments that name its matrix and its source file:
    <!-- current:paper source=docs/results/paper-20261207.json -->
    ...
    <!-- end current:paper -->
Writing a suite of a matrix replaces that matrix's block; a matrix without one gets a new block
just before `<!-- current blocks end -->`. tests/test_docs.py regenerates every block from its
source and fails when the page differs, so a hand edit inside a block cannot last.
"""
from __future__ import annotations

import re
from pathlib import Path

from tabulate import tabulate

from schemas.results import Suite

from ..errors import PolyllamaError
from ..files import write_atomic
from . import summary
from .stats import geometric_mean

END_OF_BLOCKS = "<!-- current blocks end -->"
BLOCK = re.compile(r"<!-- current:(?P<matrix>[\w.-]+) source=(?P<source>\S+) -->\n.*?<!-- end current:(?P=matrix) -->",
                   re.S)


def command(suite: Suite) -> str:
    """The `invoke bench` command that makes a suite like this one (its matrix, as run)."""
    m = suite.matrix
    parts = ["invoke bench", f"--matrix {suite.matrix_name}"]
    ports = sorted(p.name for p in suite.ports)
    if ports:
        parts.append(f"--ports {','.join(ports)}")
    if m.types != ["f32"]:
        parts.append(f"--types {','.join(m.types)}")
    parts.append(f"--runs {m.runs}")
    return " ".join(parts)


def _table(suite: Suite, gs: list[summary.Group]) -> str:
    """Cells down, ports across (fastest overall first): tok/s and the ratio to the cell's fastest."""
    rel: dict[str, list[float]] = {}
    for g in gs:
        for e in g.ranking:
            rel.setdefault(e.port, []).append(e.vs_best.value if e.vs_best else 1.0)
    means = {p: geometric_mean(v) or 0 for p, v in rel.items()}
    ports = sorted(rel, key=lambda p: -means[p])
    rows = []
    for g in gs:
        by = {e.port: e for e in g.ranking}
        row = [g.model, g.threads]
        for p in ports:
            e = by.get(p)
            row.append("-" if e is None else f"**{e.tok.mean:.1f}**" if e.vs_best is None
                       else f"{e.tok.mean:.1f} ({e.vs_best.fmt()})")
        best = g.best_port
        row.append(f"{100 * best.roof:.0f}%" + (" (probe defect)" if best.roof > 1 else "")
                   if best and best.roof else "-")
        row.append(f"{g.vs_peer:.2f}x ({g.peer.source})" if g.vs_peer else "-")
        rows.append(row)
    rows.append(["geometric mean vs fastest", ""] + [f"{means[p]:.2f}" for p in ports] + ["", ""])
    header = ["model", "threads"] + [f"{p} (peer)" if any(e.port == p and e.role == "peer" for g in gs
                                                          for e in g.ranking) else p for p in ports]
    return tabulate(rows, headers=header + ["best % roofline", "best vs llama.cpp at its best"], tablefmt="github")


def block(suite: Suite, source: str) -> str:
    """The markdown of one matrix's current results."""
    h = suite.host
    gs = summary.groups(suite)
    probes = "; ".join(f"{p.bytes / 1e6:.0f} MB x {p.threads}: {p.gbs:.1f} GB/s" for p in h.probes)
    origins = sorted({c.model.origin for c in suite.cells})
    lines = [
        f"<!-- current:{suite.matrix_name} source={source} -->",
        f"### `{suite.matrix_name}`: {suite.started[:10]}, commit {h.git_commit[:10]}{' (dirty)' if h.git_dirty else ''}",
        "",
        f"- **host:** {h.cpu_model}, {h.logical_cores} logical cores, {h.memory_bytes / 2**30:.1f} GiB, {h.os.split(' (')[0]}",
        f"- **made by:** `{command(suite)}` ({suite.matrix.steps} steps, {suite.matrix.warmup} warm-up + "
        f"{suite.matrix.runs} runs a cell, {', '.join(origins)} weights); raw samples in `{source}`",
        f"- **roofline probe:** {probes or 'not measured'}",
        *[f"- **peer:** {p.name}, {p.toolchain or 'toolchain not recorded'}" for p in suite.ports if p.role == "peer"],
        f"- **{summary.validation_line(suite)}**",
        "",
        summary.overall(suite, gs),
        "",
        _table(suite, gs) if gs else "(no finished cell)",
        "",
    ]
    defects = summary.probe_defects(suite)
    if defects:
        lines += [f"Probe defects (above 100% of the roofline, not targets met): {', '.join(defects)}.", ""]
    lines += [f"- {summary.sentence(g)}" for g in gs]
    lines += ["", f"<!-- end current:{suite.matrix_name} -->"]
    return "\n".join(lines)


def update(doc: Path, suite: Suite, source: str) -> Path:
    """Replace (or add) the suite's matrix block in the page."""
    try:
        text = doc.read_text()
    except OSError as e:
        raise PolyllamaError(f"{doc}: cannot read the page to update: {e.strerror or e}") from None
    new = block(suite, source)
    for m in BLOCK.finditer(text):
        if m.group("matrix") == suite.matrix_name:
            text = text[:m.start()] + new + text[m.end():]
            break
    else:
        if END_OF_BLOCKS not in text:
            raise PolyllamaError(f"{doc}: no '{END_OF_BLOCKS}' marker to add the {suite.matrix_name} block before")
        text = text.replace(END_OF_BLOCKS, new + "\n\n" + END_OF_BLOCKS)
    write_atomic(doc, text.encode())
    return doc


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(matrix, source, the block's text) for every generated block of a page."""
    return [(m.group("matrix"), m.group("source"), m.group(0)) for m in BLOCK.finditer(text)]
