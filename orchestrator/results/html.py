"""One self-contained HTML page of a suite (results/<suite>.html beside its JSON).

Everything the page needs is inline: Plotly's JavaScript once in the head, the figures as Plotly
charts (html_charts.py), the styles and scripts (html_assets.py). Nothing is fetched: the page
opens from disk without a network. It opens with the answer (the summary card), then the machine.

Every number comes from the raw samples through results/stats.py, results/summary.py and
results/report.py (good runs only: failed runs and runs on a busy machine are left out, and the
page says how many were).
"""
from __future__ import annotations

import datetime as dt
import json
import math
from html import escape
from pathlib import Path

from schemas.results import Suite, ValidationRow

from ..errors import PolyllamaError
from ..files import write_atomic
from . import summary
from .figures import GROUP_ORDER, GROUP_TITLES, footer, ordered_ports, port_group
from .html_assets import CSS, ERROR_PROBE, SORT_TABLES
from .html_charts import CHARTS, digits, fmt, interval, label, views_of
from .report import baseline_port, model_rows, model_title, models_of, type_rows
from .stats import busy_runs, geometric_mean
from .summary import describe_peer

NOT_RUN = "not run with this suite"

# ---------------------------------------------------------------- tables
def _td(text: str, value=None, cls: str = "") -> str:
    v = "" if value is None or (isinstance(value, float) and math.isnan(value)) else f' data-v="{value}"'
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{v}>{text}</td>"


def _table(header: list[str], rows: list[str], sortable: bool = True) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    cls = ' class="sortable"' if sortable else ""
    return (f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></div>")


def _cell_table(suite, model, ports, threads, views) -> str:
    base = baseline_port(suite)
    flags = {(r["port"], r["threads"]): r["flags"] for r in model_rows(suite, model)}
    rows = []
    for p in ports:
        for t in threads:
            v = views.get((model, p, t))
            if v is None:
                continue
            c, tok = v.cell, v.tok
            d = digits(tok.mean) if tok else 1
            status = "ok" if c.status == "ok" else f'<span class="badge bad">{escape(c.status)}</span>'
            rows.append("<tr>" + "".join([
                _td(escape(label(suite, p))),
                _td(escape(GROUP_TITLES[port_group(suite, p)]), GROUP_ORDER.index(port_group(suite, p))),
                _td(str(t), t, "num"),
                _td(fmt(tok.mean, d) if tok else "-", tok.mean if tok else None, "num"),
                _td(interval(tok, d) if tok else "-"),
                _td(str(tok.n) if tok else "0", tok.n if tok else 0, "num"),
                _td(fmt(v.wall.mean, 3) if v.wall else "-", v.wall.mean if v.wall else None, "num"),
                _td(fmt(v.load.mean, 3) if v.load else "-", v.load.mean if v.load else None, "num"),
                _td(fmt(v.ttft.mean, 4) if v.ttft else "-", v.ttft.mean if v.ttft else None, "num"),
                _td(fmt(v.decode.mean, 3) if v.decode else "-", v.decode.mean if v.decode else None, "num"),
                _td(fmt(v.rss.max, 1) if v.rss else "-", v.rss.max if v.rss else None, "num"),
                _td(fmt(100 * v.roof, 0, "%") if v.roof else "-", v.roof, "num"),
                _td(escape(v.speed.fmt()) if v.speed else "-", v.speed.value if v.speed else None, "num"),
                _td(f"{len(v.runs)}/{len(c.runs)}", len(v.runs), "num"),
                _td(status),
                _td(escape(flags.get((label(suite, p), t), "")), None, "flags"),
            ]) + "</tr>")
    header = ["port", "group", "threads", "tok/s", "95% CI", "n", "time/inference s", "load s", "first token s",
              "decode s", "peak MiB", "% roofline", f"vs {base or '-'} [95% CI]", "good/all runs", "status", "flags"]
    return _table(header, rows)


def _relative(suite: Suite, views) -> str:
    base = baseline_port(suite)
    if base is None:
        return '<p class="note">No baseline: neither the C port nor the reference ran.</p>'
    keys = sorted({(c.label, c.threads) for c in suite.cells},
                  key=lambda k: (models_of(suite).index(k[0]), k[1]))
    ports, speed = ordered_ports(suite), {}
    for p in ports:
        speed[p] = [views[(m, p, t)].speed if (m, p, t) in views else None for m, t in keys]
    means = {p: geometric_mean([r.value for r in rs if r]) for p, rs in speed.items()}
    rows, last = [], None
    for p in sorted(ports, key=lambda p: (GROUP_ORDER.index(port_group(suite, p)), -(means[p] or 0), p)):
        g = port_group(suite, p)
        if g != last:
            rows.append(f'<tr class="group"><td colspan="{len(keys) + 2}">{escape(GROUP_TITLES[g])}</td></tr>')
            last = g
        tds = [_td(escape(label(suite, p)))]
        for r in speed[p]:
            if r is None:
                tds.append(_td("-", None, "num"))
                continue
            shade = max(-1.0, min(1.0, math.log(r.value) / math.log(2)))
            colour = (f"rgba(27,127,59,{0.45 * shade:.2f})" if shade > 0 else f"rgba(176,0,32,{-0.45 * shade:.2f})")
            tds.append(f'<td class="num" data-v="{r.value:.4f}" style="background:{colour}">{escape(r.fmt())}</td>')
        g_mean = means[p]
        tds.append(_td(f"<b>{g_mean:.2f}x</b>" if g_mean else "-", g_mean, "num"))
        rows.append("<tr>" + "".join(tds) + "</tr>")
    header = ["port"] + [f"{m} j={t}" for m, t in keys] + ["geometric mean"]
    return (f'<p class="note">Decode speed relative to <b>{escape(base)}</b> in the same model and thread count: '
            f"ratio of geometric means with a 95% interval (Welch on the log scale); the last column is the "
            f"geometric mean of a port's ratios. Green: faster, red: slower.</p>"
            + _table(header, rows, sortable=False))


def _types(suite: Suite) -> str:
    """Each port's weight types side by side with its speed-up over its own f32 cell (report.type_rows)."""
    rows = type_rows(suite)
    if not rows:
        return ""
    header = list(rows[0])
    body = ["<tr>" + "".join(_td(escape(str(r[k])), r[k] if isinstance(r[k], int) else None) for k in header) + "</tr>"
            for r in rows]
    return ('<h3>Weight types side by side</h3><p class="note">Decode tok/s of each port per weight type, and the '
            "speed-up over the port's own f32 cell of the same model and thread count (95% interval).</p>"
            + _table(header, body))


# ---------------------------------------------------------------- summary card
def _shade(value: float) -> str:
    """Green for the fastest, fading to red at half its speed or less."""
    x = max(0.0, min(1.0, (value - 0.5) / 0.5))
    return f"rgba({int(176 * (1 - x) + 27 * x)},{int(0 * (1 - x) + 127 * x)},{int(32 * (1 - x) + 59 * x)},0.30)"


def _summary(suite: Suite) -> str:
    """The answer first: per cell the ranking relative to the fastest row with 95% intervals, the
    peer at its best, the best port's share of the roofline, whether the texts agree; then one
    sentence per cell, validation and probe defects."""
    gs = summary.groups(suite)
    if not gs:
        return '<section class="card" id="summary"><h2>Summary</h2><p>No cell finished.</p></section>'
    rel: dict[str, list[float]] = {}
    for g in gs:
        for e in g.ranking:
            rel.setdefault(e.port, []).append(e.vs_best.value if e.vs_best else 1.0)
    ports = sorted(rel, key=lambda p: -(geometric_mean(rel[p]) or 0))
    body = []
    for g in gs:
        by = {e.port: e for e in g.ranking}
        tds = [_td(escape(g.model)), _td(str(g.threads), g.threads, "num"),
               _td(f"<b>{escape(g.best_port.port)}</b>" if g.best_port else "-")]
        for p in ports:
            e = by.get(p)
            if e is None:
                tds.append(_td("-", None, "num"))
                continue
            value = e.vs_best.value if e.vs_best else 1.0
            text = f"<b>{e.tok.mean:.{digits(e.tok.mean)}f}</b><br>" + (escape(e.vs_best.fmt()) if e.vs_best else "fastest")
            tds.append(f'<td class="num" data-v="{value:.4f}" style="background:{_shade(value)}">{text}</td>')
        best = g.best_port
        roof = (f"{100 * best.roof:.0f}%" + (' <span class="badge bad">probe defect</span>' if best.roof > 1 else "")
                if best and best.roof else "-")
        peer = (f"{g.vs_peer:.2f}x<br><small>vs {escape(g.peer.source)} {g.peer.best:.1f}</small>" if g.vs_peer else "-")
        tds += [_td(roof, best.roof if best else None, "num"), _td(peer, g.vs_peer, "num"),
                _td(escape(summary.text_note(g)))]
        body.append("<tr>" + "".join(tds) + "</tr>")
    header = ["model", "threads", "fastest"] + [label(suite, p) for p in ports] + [
        "best port % roofline", "best port vs llama.cpp at its best", "generated text"]
    defects = summary.probe_defects(suite)
    validation = summary.validation_line(suite)
    failed_validation = suite.validation is not None and any(not r.ok and not r.report_only for r in suite.validation)
    notes = [f'<p class="lead">{escape(summary.overall(suite, gs))}</p>',
             f'<p><span class="badge {"bad" if failed_validation or suite.validation is None else "real"}">'
             f'{escape(validation)}</span></p>']
    if defects:
        notes.append(f'<p><span class="badge bad">probe defect</span> {len(defects)} cells read above 100% of their '
                     f"roofline: the bandwidth probe read slower than the port there, so those shares are not "
                     f"targets met: {escape(', '.join(defects))}</p>")
    return ('<section class="card" id="summary"><h2>Summary: which port is fastest, by how much, how sure</h2>'
            + "".join(notes)
            + '<p class="note">Each cell: mean decode tok/s over the good runs, and the ratio to the fastest row '
              "of that model and thread count with a 95% interval (Welch on the log scale). An interval that "
              "contains 1 is a tie within noise. llama.cpp at its best is the better of its row and its own "
              "<code>llama-bench</code> on the same file and thread count.</p>"
            + _table(header, body, sortable=False)
            + "<ul>" + "".join(f"<li>{escape(summary.sentence(g))}</li>" for g in gs) + "</ul></section>")


# ---------------------------------------------------------------- header card
def _dl(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _badge(origin: str) -> str:
    return f'<span class="badge {escape(origin)}">{escape(origin)}</span>'


def _quiet(suite: Suite) -> str:
    m = suite.matrix
    measured = sum(len(c.runs) for c in suite.cells)
    busy = [(c, busy_runs(c)) for c in suite.cells if busy_runs(c)]
    recorded = any(r.others_cpu_s is not None for c in suite.cells for r in c.runs)
    guard = (f"a run is marked busy when other processes used more than {100 * m.busy_share:.0f}% of a core "
             f"(+0.05 s) while it ran")
    if not recorded:
        return f"not recorded in this file (format {suite.format_version}); no run was left out as busy"
    if not busy:
        return f"no measured run was disturbed ({measured} runs; {guard})"
    lines = "".join(f"<li>{escape(c.port)} {escape(c.label)} j={c.threads}: {n} of {len(c.runs)}</li>"
                    for c, n in busy)
    return (f'<span class="badge bad">{sum(n for _, n in busy)} of {measured} runs left out</span> '
            f"taken while the machine was busy; kept in the JSON, left out of every figure ({guard}):<ul>{lines}</ul>")


def _header(suite: Suite) -> str:
    h, m = suite.host, suite.matrix
    caches = ", ".join(f"{escape(k)} {escape(v)}" for k, v in h.caches.items()) or "unknown"
    clock = f"{h.cpu_mhz:.0f} MHz" if h.cpu_mhz else "not exposed"
    host = _dl([
        ("host", escape(h.hostname)), ("CPU", escape(h.cpu_model)),
        ("cores", f"{h.logical_cores} logical, {h.physical_cores or '?'} physical"),
        ("memory", f"{h.memory_bytes / 2**30:.1f} GiB"), ("caches", caches), ("OS", escape(h.os)),
        ("governor / clock", f"{escape(h.cpu_governor or 'not exposed')} / {clock}"),
        ("Python", escape(h.python))] + ([("container image", escape(h.container_image))] if h.container_image else []))
    threads = sorted({c.threads for c in suite.cells}) or m.thread_counts()
    runs = f"{m.runs} measured + {m.warmup} warmup per cell, interleaved"
    suite_dl = _dl([
        ("suite", escape(suite.suite_id)),
        ("date", escape(suite.started) + (f" to {escape(suite.finished)}" if suite.finished else " (not finished)")),
        ("commit", f"<code>{escape(h.git_commit[:12])}</code>" + (" (dirty)" if h.git_dirty else "")),
        ("matrix", f"<b>{escape(suite.matrix_name)}</b>" + (f": {escape(m.description)}" if m.description else "")),
        ("models", ", ".join(escape(x) for x in m.models)), ("weight types", ", ".join(m.types)),
        ("threads", ", ".join(map(str, threads))),
        ("runs per cell", runs), ("steps", f"{m.steps}, temperature {m.temperature}, seed {m.seed}"),
        ("result format", str(suite.format_version))])
    models = []
    for name in dict.fromkeys(c.model.label for c in suite.cells):  # a model once, whatever its tests
        c = next(c for c in suite.cells if c.model.label == name)
        fmts = sorted({x.model.format for x in suite.cells if x.model.label == name})
        models.append("<tr>" + _td(escape(name)) + _td(_badge(c.model.origin))
                      + _td(_badge(c.model.tokenizer_origin) if c.model.tokenizer_origin else "embedded")
                      + _td(", ".join(fmts)) + _td(f"{c.model.weight_bytes / 1e6:.1f}", c.model.weight_bytes, "num")
                      + "</tr>")
    if h.probes:
        probes = [("<tr>" + _td(f"{p.bytes / 2**20:.1f}", p.bytes, "num") + _td(str(p.threads), p.threads, "num")
                   + _td(str(p.streams), p.streams, "num") + _td(f"{p.gbs:.1f}", p.gbs, "num")
                   + _td(f"<code>{escape(p.method)}</code>" if p.method else "scalar sums, 4 streams (before format 4)")
                   + "</tr>") for p in sorted(h.probes, key=lambda p: (p.bytes, p.threads))]
        roof = _table(["MiB read (one model)", "threads", "streams per thread", "GB/s", "how it read"], probes)
    else:
        roof = _table(["MiB read", "threads", "GB/s"],
                      [("<tr>" + _td(str(h.bandwidth_probe_mib), h.bandwidth_probe_mib, "num") + _td(str(t), t, "num")
                        + _td(f"{g:.1f}", g, "num") + "</tr>") for t, g in sorted(h.bandwidth_gbs.items())])
    tools = []
    for p in sorted(suite.ports, key=lambda p: (GROUP_ORDER.index(port_group(suite, p.name)), p.name)):
        built = p.build.split(":")[0]
        tools.append("<tr>" + _td(escape(label(suite, p.name))) + _td(escape(GROUP_TITLES[port_group(suite, p.name)]))
                     + _td(escape(p.language)) + _td(escape(p.toolchain or "-")) + _td(f"<code>{escape(p.build_flags)}</code>")
                     + _td(escape(built) if built == "built" else f'<span class="badge bad">{escape(p.build)}</span>')
                     + "</tr>")
    return (f'<section class="card" id="setup"><h2>Machine and suite</h2><div class="facts">{host}{suite_dl}</div>'
            f'<div class="facts"><div><h3>Models</h3>'
            + _table(["model", "weights", "tokenizer", "format", "MB read per token"], models)
            + f'</div><div><h3>Roofline: memory read bandwidth</h3>{roof}</div></div>'
            f"<h3>Quiet machine</h3><p>{_quiet(suite)}</p>"
            f"<h3>Toolchains</h3>"
            + (_table(["port", "group", "language", "toolchain", "build flags", "build"], tools) if tools
               else '<p class="note">not recorded</p>')
            + "</section>")


# ---------------------------------------------------------------- validation, failures
def load_validation(path: Path | None) -> list[dict] | None:
    """Rows of `invoke validate` (its table, as a JSON list of objects, or {"rows": [...]})."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PolyllamaError(f"{path}: not a JSON file of validation rows: {e}") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PolyllamaError(f"{path}: expected a list of validation rows (objects)")
    return rows


def _row_ok(row: dict) -> bool:
    if row.get("report_only"):
        return True
    if "result" in row:
        return str(row["result"]).lower() == "ok"
    if "ok" in row:
        return bool(row["ok"])
    return not row.get("problem")


def _as_row(row: dict) -> ValidationRow:
    """A row of `invoke validate --out`, or of an older table of strings (its verdict kept)."""
    try:
        return ValidationRow(**row)
    except (TypeError, ValueError):
        ok = _row_ok(row)
        return ValidationRow(port=str(row.get("port", "?")), case=str(row.get("case", "?")), ok=ok,
                             problem="" if ok else str(row.get("result") or row.get("problem") or "failed"))


def _validation(rows: list[dict] | None) -> str:
    if rows is None:
        return f'<p>Validation against the reference core: <b>{NOT_RUN}</b> (give <code>--validation FILE</code>).</p>'
    keys = list(dict.fromkeys(k for r in rows for k in r))
    failed = [r for r in rows if not _row_ok(r)]
    body = ["<tr>" + "".join(_td(escape(str(r.get(k, "")))) for k in keys) + "</tr>" for r in rows]
    verdict = (f'<span class="badge real">all {len(rows)} passed</span>' if not failed else
               f'<span class="badge bad">{len(failed)} of {len(rows)} failed</span>')
    return f"<p>Validation against the reference core: {verdict}</p>" + _table(keys, body)


def _failures(suite: Suite) -> str:
    rows = []
    for c in sorted((c for c in suite.cells if c.status != "ok"), key=lambda c: (c.label, c.port, c.threads)):
        rows.append("<tr>" + _td(escape(label(suite, c.port))) + _td(escape(c.label)) + _td(str(c.threads), c.threads, "num")
                    + _td(f'<span class="badge bad">{escape(c.status)}</span>') + _td(f"{len(c.runs)}", len(c.runs), "num")
                    + _td(escape(c.reason or "interrupted: --resume runs it again")) + "</tr>")
    builds = [p for p in suite.ports if not p.build.startswith("built")]
    extra = "".join(f"<li><b>{escape(p.name)}</b>: {escape(p.build)}</li>" for p in builds)
    if not rows and not extra:
        return "<p>Every cell ran and every port built.</p>"
    return ((_table(["port", "model", "threads", "status", "runs made", "reason"], rows) if rows else "")
            + (f"<h3>Ports not built (skipped)</h3><ul>{extra}</ul>" if extra else ""))


def _peers(suite: Suite) -> str:
    items = []
    for c in suite.cells:
        if c.peer_check is not None:
            try:
                text = describe_peer(c.peer_check)
            except (TypeError, ZeroDivisionError):
                text = "peer check gave no figure"
            items.append(f"<li>{escape(c.port)} {escape(c.label)} j={c.threads}: {escape(text)}</li>")
    return f"<h3>The peer's own benchmark tool beside its row</h3><ul>{''.join(items)}</ul>" if items else ""


# ---------------------------------------------------------------- the page
def build_page(suite: Suite, validation: list[dict] | None = None, source: str | None = None) -> str:
    if validation is None and suite.validation is not None:
        validation = [r.model_dump() for r in suite.validation]
    import plotly  # lazy: heavy, and only a page needs it
    from plotly.offline import get_plotlyjs

    views = views_of(suite)
    shown = {k: v for k, v in views.items() if v.cell.status == "ok"}  # charts: cells that finished and passed
    models = models_of(suite)
    sections, n = [], 0
    for model in models:
        ports = ordered_ports(suite, model)
        threads = sorted({c.threads for c in suite.cells if c.label == model})
        charts = []
        for draw in CHARTS:
            n += 1
            charts.append(draw(suite, model, ports, threads, shown, f"chart-{n}"))
        notes = []
        if len(threads) < 2:
            notes.append("one thread count in this suite: no thread-scaling chart.")
        missing = [c for c in suite.cells if c.label == model and c.status != "ok"]
        if missing:
            why = {}
            for c in missing:
                why.setdefault((c.port, c.reason or c.status), []).append(str(c.threads))
            notes.append("not in the charts (failed or interrupted, see below): " + "; ".join(
                f"{p} j={','.join(ts)}: {reason[:80]}" for (p, reason), ts in why.items()))
        if not any(v.roof for k, v in views.items() if k[0] == model):
            notes.append("no read bandwidth measured at these thread counts: no roofline chart.")
        sections.append(
            f'<section class="card" id="{escape(model.replace(" ", "-"))}"><h2>{escape(model_title(suite, model))}</h2>'
            f'<p class="note">Bars: mean of the good runs with a 95% confidence interval (Student t). Hover a bar for '
            f"its raw samples. Hatched or dashed: the peer (an external engine). Ports are grouped (compiled, managed, "
            f"Python and frameworks, peer) and sorted fastest first.</p>"
            + "".join(f'<p class="note">{escape(x)}</p>' for x in notes)
            + f'<div class="charts">{"".join(c for c in charts if c)}</div>'
            f"<h3>Every cell</h3>{_cell_table(suite, model, ports, threads, views)}</section>")
    nav = "".join(f'<a href="#{escape(m.replace(" ", "-"))}">{escape(m)}</a>' for m in models)
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    title = f"polyllama: {suite.suite_id}"
    origins = sorted({c.model.origin for c in suite.cells})
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<script>{ERROR_PROBE}</script>
<style>{CSS}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<div id="js-errors" hidden></div>
<main>
<h1>{escape(title)}</h1>
<div class="sub">Llama 2 inference (llama2.c models) across languages: {len({c.port for c in suite.cells})} ports,
{len(models)} model{'s' if len(models) != 1 else ''} ({', '.join(origins)} weights), matrix
<b>{escape(suite.matrix_name)}</b>, {escape(suite.started[:10])}, commit {escape(suite.host.git_commit[:10])}.</div>
<nav><a href="#summary">summary</a><a href="#setup">machine</a>{nav}<a href="#relative">relative speed</a><a href="#validation">validation</a><a href="#failures">failed and skipped</a></nav>
{_summary(suite)}
{_header(suite)}
{''.join(sections)}
<section class="card" id="relative"><h2>Relative speed</h2>{_relative(suite, shown)}{_types(suite)}{_peers(suite)}</section>
<section class="card" id="validation"><h2>Validation</h2>{_validation(validation)}</section>
<section class="card" id="failures"><h2>Failed and skipped</h2>{_failures(suite)}</section>
<footer>{escape(footer(suite))}<br>Generated {generated} by polyllama from {escape(source or suite.suite_id + '.json')}
(plotly {plotly.__version__}, inline). Summaries are computed from the raw samples in the result file.</footer>
</main>
<script>{SORT_TABLES}</script>
</body>
</html>
"""


def write_page(suite: Suite, path: Path, validation: Path | None = None, source: Path | None = None) -> Path:
    """The page; a validation file given here replaces the suite's own validation rows when its rows
    are `invoke validate --out` rows, and is shown as a plain table otherwise."""
    rows = load_validation(validation)
    if rows is not None:
        suite = suite.model_copy(update={"validation": [_as_row(r) for r in rows]})
    write_atomic(path, build_page(suite, rows, source.name if source else None).encode("utf-8"))
    return path
