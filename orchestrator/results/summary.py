"""The answer first: per model and thread count, which port is fastest, by how much and how sure,
where the peer stands at its best, and whether every port wrote the same text; then the suite's
validation and its probe defects. The report's first table and the HTML page's first card both
come from here.

"The peer at its best" is the better of its row (our driver, measured like every port) and its
own benchmark tool's figure on the same cell (the peer check): a port is ahead of llama.cpp only
when it is ahead of both. A cell above 100% of its roofline means the bandwidth probe read slower
than a program reading the same bytes: a defect of the probe, shown as such, never a target met.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.results import Cell, PeerCheck, Suite

from .stats import Ratio, Summary, geometric_mean, good_runs, metric, ratio_ci, roofline_share


def describe_peer(check: PeerCheck) -> str:
    """One line on a peer's own tool against its row."""
    if check.problem:
        return f"peer check failed: {check.problem}"
    verdict = "agrees" if check.agrees else "DISAGREES"
    return (f"own tool {check.tool_tok_s:.1f} tok/s, row {check.row_tok_s or 0:.1f} "
            f"({(check.row_tok_s or 0) / check.tool_tok_s:.2f}x): {verdict} within {100 * check.tolerance:.0f}%")


def roof(suite: Suite, cell: Cell, threads: int | None = None) -> tuple[float, float] | None:
    """(work per token, work per second the host can do) of the cell's roofline at its thread count
    (or another's): a tg cell's bytes per token against the read bandwidth at its model's size, a
    pp cell's FLOPs per position against the compute peak (f32 FMA; int8 dot products for q8_0,
    whose products are 8-bit); None where the probe did not run."""
    threads = cell.threads if threads is None else threads
    if cell.prefill:
        peak = suite.host.peak_for("int8" if cell.model.weight_type == "q8_0" else "f32", threads)
        return (cell.flops_per_token, peak * 1e9) if peak and cell.flops_per_token else None
    gbs = suite.host.bandwidth_for(cell.model.weight_bytes, threads)
    return (cell.model.weight_bytes, gbs * 1e9) if gbs else None


def roofline(suite: Suite, cell: Cell) -> float | None:
    """The cell's mean rate as a share of its roofline (roof)."""
    tok, r = metric(cell, "tok_s"), roof(suite, cell)
    return roofline_share(tok.mean if tok else None, r[0], r[1] / 1e9) if r else None


def _samples(cell: Cell) -> list[float]:
    return [r.tok_s for r in good_runs(cell) if r.tok_s]


@dataclass(frozen=True)
class Entry:
    """One row of a ranking: a port's decode rate and its speed relative to the fastest row."""
    port: str
    role: str
    tok: Summary
    vs_best: Ratio | None  # this row / the fastest row, 95% interval; None for the fastest itself
    roof: float | None


@dataclass(frozen=True)
class Peer:
    """The peer engine at its best on one cell."""
    port: str
    row: float  # the row's mean tok/s
    tool: float | None  # its own tool's figure, when the check ran
    best: float
    source: str  # "row" or the tool's name


@dataclass(frozen=True)
class Group:
    """Every port on one (model with its weight type, thread count)."""
    model: str
    origin: str
    threads: int
    ranking: list[Entry]  # fastest first
    peer: Peer | None
    texts: dict[str, list[str]]  # SHA-256 of the generated text -> ports that wrote it
    prefill: bool = False  # a pp group: prompt tokens per second against the compute roof

    @property
    def best_port(self) -> Entry | None:
        """The fastest of our own rows (the peer is not a port)."""
        return next((e for e in self.ranking if e.role != "peer"), None)

    @property
    def runner_up(self) -> Entry | None:
        ports = [e for e in self.ranking if e.role != "peer"]
        return ports[1] if len(ports) > 1 else None

    @property
    def vs_peer(self) -> float | None:
        """The best port's mean over the peer at its best: above 1 means ahead of llama.cpp."""
        best = self.best_port
        return best.tok.mean / self.peer.best if best and self.peer else None


def _tool_name(check: PeerCheck) -> str:
    return check.command[0].rsplit("/", 1)[-1] if check.command else "its own tool"


def _peer(cells: list[Cell]) -> Peer | None:
    cell = next((c for c in cells if c.role == "peer"), None)
    tok = metric(cell, "tok_s") if cell else None
    if tok is None:
        return None
    check = cell.peer_check
    tool = check.tool_tok_s if check and not check.problem else None
    if tool and tool > tok.mean:
        return Peer(cell.port, tok.mean, tool, tool, _tool_name(check))
    return Peer(cell.port, tok.mean, tool, tok.mean, "row")


def _texts(cells: list[Cell]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in cells:
        for h in sorted({r.text_sha256 for r in good_runs(c) if r.text_sha256}):
            out.setdefault(h, []).append(c.port)
    return out


def groups(suite: Suite) -> list[Group]:
    keys = []
    for c in suite.cells:
        if (c.label, c.threads) not in keys:
            keys.append((c.label, c.threads))
    out = []
    for model, threads in sorted(keys, key=lambda k: (keys.index((k[0], min(t for m, t in keys if m == k[0]))), k[1])):
        cells = [c for c in suite.cells if c.label == model and c.threads == threads and c.status == "ok"
                 and metric(c, "tok_s")]
        if not cells:
            continue
        cells.sort(key=lambda c: -metric(c, "tok_s").mean)
        top = _samples(cells[0])
        ranking = [Entry(c.port, c.role, metric(c, "tok_s"), ratio_ci(top, _samples(c)) if i else None,
                         roofline(suite, c)) for i, c in enumerate(cells)]
        out.append(Group(model, cells[0].model.origin, threads, ranking, _peer(cells), _texts(cells),
                         cells[0].prefill))
    return out


def probe_defects(suite: Suite) -> list[str]:
    """Cells above 100% of their roofline: where the probe read slower than a port did."""
    return [f"{c.port} {c.label} j={c.threads} ({100 * share:.0f}%)" for c in suite.cells
            if c.status == "ok" and (share := roofline(suite, c)) and share > 1]


def _sure(g: Group) -> str:
    """How sure the lead is: the runner-up's ratio to the best port, with its interval."""
    second = g.runner_up
    if second is None or second.vs_best is None:
        return ""
    r = second.vs_best
    inv = Ratio(1 / r.value, 1 / r.high, 1 / r.low, r.n, r.level)
    if r.n < 2:
        return f"; {second.port} next at {r.value:.2f}x of it (too few runs for an interval)"
    if r.high >= 1:
        return f"; tied with {second.port} within noise ({inv.fmt()})"
    return f"; {inv.fmt()} ahead of {second.port}"


def sentence(g: Group) -> str:
    """The cell's answer in plain words."""
    best = g.best_port
    if best is None:
        return f"{g.model}, {g.threads} thread{'s' if g.threads > 1 else ''}: only the peer ran."
    kind = "compute" if g.prefill else "memory"
    rate = "prompt tok/s" if g.prefill else "tok/s"
    roof = f", {100 * best.roof:.0f}% of the {kind} roofline" if best.roof else ""
    if best.roof and best.roof > 1:
        roof += " (a probe defect, not a target met)"
    text = (f"{g.model} ({g.origin}), {g.threads} thread{'s' if g.threads > 1 else ''}: {best.port} is fastest at "
            f"{best.tok.mean:.1f} {rate}{roof}{_sure(g)}")
    if g.peer:
        p = g.peer
        at = f"{p.source}, {p.best:.1f} tok/s" + (f"; its row {p.row:.1f}" if p.source != "row" else
                                                   f"; its own tool {p.tool:.1f}" if p.tool else "; no own-tool figure")
        v = g.vs_peer
        text += (f"; {v:.2f}x of {p.port} at its best ({at})" if v < 1 else
                 f"; {v:.2f}x ahead of {p.port} at its best ({at})")
    return text + "."


def text_note(g: Group) -> str:
    if not g.texts:
        return "no text hashes recorded"
    if len(g.texts) == 1:
        return f"all {sum(len(v) for v in g.texts.values())} rows wrote the same text"
    return "texts differ: " + "; ".join(f"{h[:8]}: {', '.join(ps)}" for h, ps in
                                        sorted(g.texts.items(), key=lambda kv: -len(kv[1])))


def validation_line(suite: Suite) -> str:
    rows = suite.validation
    if rows is None:
        return "validation: not run with this suite"
    counted = [r for r in rows if not r.report_only]
    failed = [r for r in counted if not r.ok]
    ports = sorted({r.port for r in rows})
    if not failed:
        return f"validation: all {len(counted)} cases passed ({', '.join(ports)}) against the reference core"
    return (f"validation: {len(failed)} of {len(counted)} cases FAILED: "
            + "; ".join(f"{r.port} {r.case}: {r.problem or 'mismatch'}" for r in failed[:8]))


def overall(suite: Suite, gs: list[Group] | None = None) -> str:
    """One sentence for the whole suite: who leads where, and each port's geometric-mean speed
    relative to the fastest row of each cell; token generation and prompt processing apart."""
    gs = groups(suite) if gs is None else gs
    if not gs:
        return f"The {suite.matrix_name} suite has no finished cell."
    kinds = [(what, [g for g in gs if g.prefill == pp]) for what, pp in
             (("token generation", False), ("prompt processing", True))]
    kinds = [(what, part) for what, part in kinds if part]
    if len(kinds) == 1:
        return _overall(suite, gs, "")
    return " ".join(_overall(suite, part, what) for what, part in kinds)


def _overall(suite: Suite, gs: list[Group], what: str) -> str:
    leads: dict[str, int] = {}
    for g in gs:
        if g.best_port:
            leads[g.best_port.port] = leads.get(g.best_port.port, 0) + 1
    rel: dict[str, list[float]] = {}
    for g in gs:
        for e in g.ranking:
            rel.setdefault(e.port, []).append(e.vs_best.value if e.vs_best else 1.0)
    means = sorted(((p, geometric_mean(v)) for p, v in rel.items()), key=lambda kv: -(kv[1] or 0))
    lead = ", ".join(f"{p} in {n}" for p, n in sorted(leads.items(), key=lambda kv: -kv[1]))
    peer = [g.vs_peer for g in gs if g.vs_peer]
    ahead = (f"; the best port is ahead of llama.cpp at its best in {sum(v > 1 for v in peer)} of {len(peer)} cells"
             if peer else "")
    scope = f" ({what})" if what else ""
    return (f"The {suite.matrix_name} suite{scope}, {len(gs)} cells: fastest port {lead}{ahead}. Geometric mean of each "
            f"row's speed relative to the fastest row of its cell: "
            + ", ".join(f"{p} {m:.2f}" for p, m in means if m) + ".")


def rows(suite: Suite, gs: list[Group] | None = None) -> list[dict]:
    """The ranking table: one row per cell."""
    out = []
    for g in groups(suite) if gs is None else gs:
        best = g.best_port
        out.append({
            "model": g.model, "threads": g.threads,
            "ranking (tok/s, x of best [95% CI])": "; ".join(
                f"{e.port} {e.tok.mean:.1f}" + (f" {e.vs_best.fmt()}" if e.vs_best else "") for e in g.ranking),
            "best % roofline": (f"{100 * best.roof:.0f}%" + (" probe defect" if best.roof > 1 else ""))
            if best and best.roof else "-",
            "vs llama.cpp at its best": (f"{g.vs_peer:.2f}x ({g.peer.source})" if g.vs_peer else "-"),
            "text": text_note(g),
        })
    return out
