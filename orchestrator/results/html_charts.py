"""The HTML page's charts, one Plotly figure each, drawn from CellViews (every number a summary of
the good runs, from results/stats.py): decode speed, time per inference, share of the roofline,
peak memory and thread scaling.

Plotly is imported inside the chart builders: it is heavy, and only a page needs it.
"""
from __future__ import annotations

import math
from html import escape

from schemas.results import Cell, Suite

from .figures import GROUP_TITLES, PLOTLY_MARKERS, ci95, port_group, port_styles, thread_colours
from .html_assets import CONFIG, FONT
from .report import baseline_port
from .stats import good_runs, metric, ratio_ci, summarize
from .summary import roof, roofline

# ---------------------------------------------------------------- numbers of one cell
def fmt(x: float | None, digits: int = 1, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}{unit}"


def digits(value: float) -> int:
    return 0 if value >= 1000 else 1 if value >= 10 else 2 if value >= 1 else 3


def samples(values: list[float], digits: int) -> str:
    """Raw samples for a hover box, eight to a line."""
    parts = [f"{v:.{digits}f}" for v in values]
    return "<br>".join(", ".join(parts[i:i + 8]) for i in range(0, len(parts), 8)) or "none"


def interval(s, digits: int) -> str:
    h = ci95(s)
    return f"[{s.mean - h:.{digits}f}, {s.mean + h:.{digits}f}]" if h is not None else "(n=1: no interval)"


class CellView:
    """What the page shows of one cell, computed once from its good runs."""

    def __init__(self, suite: Suite, cell: Cell, base: Cell | None):
        self.cell = cell
        runs = good_runs(cell)
        self.runs = runs
        self.tok = metric(cell, "tok_s")
        self.tok_samples = [r.tok_s for r in runs if r.tok_s]
        self.wall = metric(cell, "wall_s")
        self.load = metric(cell, "load_s")
        self.ttft = metric(cell, "ttft_s")
        self.decode = summarize([r.stats.decode_s for r in runs if r.stats])
        self.rest = summarize([r.wall_s - r.stats.load_s - r.stats.ttft_s - r.stats.decode_s for r in runs if r.stats])
        self.rss = metric(cell, "rss_mib")
        limit = roof(suite, cell)
        self.roof = roofline(suite, cell)
        self.roof_samples = [t * limit[0] / limit[1] for t in self.tok_samples] if limit else []
        self.speed = None
        if base is not None and base.status == "ok":
            self.speed = ratio_ci([r.tok_s for r in good_runs(base) if r.tok_s], self.tok_samples)


def views_of(suite: Suite) -> dict[tuple[str, str, int], CellView]:
    base = baseline_port(suite)
    cells = {(c.label, c.port, c.threads): c for c in suite.cells}
    return {k: CellView(suite, c, cells.get((k[0], base, k[2])) if base else None) for k, c in cells.items()}




# ---------------------------------------------------------------- charts
def plot(fig, div_id: str, height: int, title: str, ytitle: str, legend: dict | None = None,
          horizontal: bool = False) -> str:
    """One chart as a <div> and the script that draws it (Plotly itself is in the page's head)."""
    fig.update_layout(
        height=height, template="plotly_white",
        title={"text": title, "x": 0.01, "y": 0.985, "yanchor": "top", "font": {"size": 15}},
        margin={"l": 64, "r": 16, "t": 78, "b": 40}, font={"family": FONT, "size": 12},
        hoverlabel={"align": "left"}, legend=legend or {"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right",
                                                        "yanchor": "bottom"})
    if horizontal:
        fig.update_xaxes(title_text=ytitle, rangemode="tozero")
        fig.update_yaxes(autorange="reversed")
    else:
        fig.update_yaxes(title_text=ytitle, rangemode="tozero")
    return ('<div class="chart">' + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG,
                                                 default_width="100%", default_height=f"{height}px") + "</div>")


def label(suite: Suite, port: str) -> str:
    return f"{port} (peer)" if port_group(suite, port) == "peer" else port


def axis(suite: Suite, ports: list[str]) -> list[list[str]]:
    """A two-level category axis: the group over the port."""
    return [[GROUP_TITLES[port_group(suite, p)] for p in ports], [label(suite, p) for p in ports]]


def threads_name(t: int) -> str:
    return f"{t} thread{'s' if t > 1 else ''}"


def bars(fig, suite, model, ports, threads, views, point, error=None) -> None:
    """One group of bars per port, a bar per thread count (the peer hatched): point(view, port,
    threads) gives a bar's height (None: no bar) and its hover text; error(view) its 95% half-width."""
    for t, colour in zip(threads, thread_colours(len(threads))):
        ys, hovers, err, low = [], [], [], []
        for p in ports:
            v = views.get((model, p, t))
            y, hover = point(v, p, t)
            ys.append(y)
            hovers.append(hover)
            e = (error(v) or 0) if error and y is not None else 0
            err.append(e)
            low.append(min(e, y) if y else 0)  # a quantity is not negative: the bar stops at 0
        fig.add_bar(name=threads_name(t), x=axis(suite, ports), y=ys, marker_color=colour,
                    marker_pattern_shape=["/" if port_group(suite, p) == "peer" else "" for p in ports],
                    error_y={"type": "data", "array": err, "arrayminus": low, "visible": True, "thickness": 1.2,
                             "width": 3} if error else None,
                    hovertext=hovers, hovertemplate="%{hovertext}<extra></extra>")
    fig.update_layout(barmode="group", bargap=0.22)


def tok_chart(suite, model, ports, threads, views, div_id) -> str:
    import plotly.graph_objects as go  # lazy: heavy, and only a page needs it

    def point(v, p, t):
        s = v.tok if v else None
        if not s:
            return None, (f"<b>{label(suite, p)}</b>: {v.cell.status if v else 'not run'}"
                          + (f"<br>{escape(v.cell.reason[:120])}" if v and v.cell.reason else ""))
        d = digits(s.mean)
        return s.mean, (f"<b>{label(suite, p)}</b>, {threads_name(t)}<br>"
                        f"{s.mean:.{d}f} tok/s, 95% CI {interval(s, d)}, n={s.n}<br>"
                        f"median {s.median:.{d}f}, sd {s.sd:.{d}f}<br>raw tok/s:<br>{samples(v.tok_samples, d)}")

    fig = go.Figure()
    bars(fig, suite, model, ports, threads, views, point, error=lambda v: ci95(v.tok))
    return plot(fig, div_id, 440, f"{model}: decode speed (mean, 95% CI)", "tokens per second")


def time_chart(suite, model, ports, threads, views, div_id) -> str:
    import plotly.graph_objects as go  # lazy: heavy, and only a page needs it

    keys = [(t, p) for t in threads for p in ports if (v := views.get((model, p, t))) and v.wall]
    if not keys:
        return ""
    axis = [[f"{t} thread{'s' if t > 1 else ''}" for t, _ in keys], [label(suite, p) for _, p in keys]]
    fig = go.Figure()
    parts = (("load", "load", "#9ecae1"), ("ttft", "first token", "#fdae6b"), ("decode", "decode", "#3182bd"),
             ("rest", "process start and exit", "#c7c7c7"))
    for attr, name, colour in parts:
        x, hover, err, low = [], [], [], []
        for t, p in keys:
            v = views[(model, p, t)]
            s = getattr(v, attr)
            x.append(max(s.mean, 0.0) if s else None)
            if attr == "rest":
                raw, what = [r.wall_s for r in v.runs], "whole run (wall)"
                err.append(ci95(v.wall) or 0)
                low.append(min(err[-1], v.wall.mean))
                total = f"{v.wall.mean:.3f} s, 95% CI {interval(v.wall, 3)}, n={v.wall.n}"
            else:
                raw, what = [getattr(r.stats, f"{attr}_s") for r in v.runs if r.stats], name
                total = f"{s.mean:.3f} s, n={s.n}" if s else "-"
            hover.append(f"<b>{label(suite, p)}</b>, {t} thread{'s' if t > 1 else ''}: {what}<br>{total}<br>"
                         f"raw s:<br>{samples(raw, 3)}")
        fig.add_bar(name=name, x=x, y=axis, orientation="h", marker_color=colour, hovertext=hover,
                    hovertemplate="%{hovertext}<extra></extra>",
                    error_x={"type": "data", "array": err, "arrayminus": low, "visible": True, "thickness": 1.2,
                             "width": 3} if attr == "rest" else None)
    fig.update_layout(barmode="stack", bargap=0.25)
    return plot(fig, div_id, 130 + 21 * len(keys),
                 f"{model}: time per inference (stacked means; error bar: the whole run, 95% CI)", "seconds",
                 horizontal=True)


def roof_chart(suite, model, ports, threads, views, div_id) -> str:
    import plotly.graph_objects as go  # lazy: heavy, and only a page needs it

    def point(v, p, t):
        if not (v and v.roof):
            return None, f"<b>{label(suite, p)}</b>: no figure"
        work, limit = roof(suite, v.cell)
        if v.cell.prefill:
            of = f"{limit / 1e9:.0f} G ops/s ({v.tok.mean:.1f} tok/s x {work / 1e6:.0f} MFLOP)"
        else:
            of = f"{limit / 1e9:.1f} GB/s ({v.tok.mean:.1f} tok/s x {work / 1e6:.1f} MB)"
        return 100 * v.roof, (f"<b>{label(suite, p)}</b>, {threads_name(t)}<br>{100 * v.roof:.0f}% of {of}<br>"
                              f"per run, %:<br>{samples([100 * x for x in v.roof_samples], 0)}")

    shown = [v for (m, _, _), v in views.items() if m == model and v.roof]
    if not shown:
        return ""
    compute = shown[0].cell.prefill
    fig = go.Figure()
    bars(fig, suite, model, ports, threads, views, point)
    fig.add_hline(y=100, line_dash="dash", line_color="#b00020",
                  annotation_text="measured compute peak" if compute else "measured read bandwidth",
                  annotation_position="top right")
    if compute:
        return plot(fig, div_id, 380, f"{model}: share of the compute roofline (f32 FMA; int8 dot products for q8_0)",
                    "% of compute peak")
    return plot(fig, div_id, 380, f"{model}: share of the memory-bandwidth roofline", "% of read bandwidth")


def memory_chart(suite, model, ports, threads, views, div_id) -> str:
    import plotly.graph_objects as go  # lazy: heavy, and only a page needs it

    def point(v, p, t):
        s = v.rss if v else None
        if not s:
            return None, f"<b>{label(suite, p)}</b>: no figure"
        return s.max, (f"<b>{label(suite, p)}</b>, {threads_name(t)}<br>peak {s.max:.1f} MiB "
                       f"(median {s.median:.1f}, n={s.n})<br>raw MiB:<br>"
                       f"{samples([r.max_rss_kib / 1024 for r in v.runs], 1)}")

    fig = go.Figure()
    bars(fig, suite, model, ports, threads, views, point)
    some = next((v for (m, _, _), v in views.items() if m == model), None)
    if some:
        weight_mib = some.cell.model.weight_bytes / 2**20
        fig.add_hline(y=weight_mib, line_dash="dot", line_color="#555555",
                      annotation_text=f"weights: {weight_mib:.0f} MiB", annotation_position="top left")
    return plot(fig, div_id, 380, f"{model}: peak memory (largest of the good runs)", "MiB (peak RSS)")


def scaling_chart(suite, model, ports, threads, views, div_id) -> str:
    import plotly.graph_objects as go  # lazy: heavy, and only a page needs it

    if len(threads) < 2:
        return ""
    t0 = threads[0]
    styles = port_styles(suite)
    fig = go.Figure()
    fig.add_scatter(x=threads, y=[t / t0 for t in threads], name="ideal (linear in threads)", mode="lines",
                    line={"color": "#333333", "dash": "dash", "width": 1.5}, hoverinfo="skip")
    some = next((views[(model, p, t0)] for p in ports if (model, p, t0) in views), None)
    if some:
        limits = [roof(suite, some.cell, t) for t in threads]
        what = "compute peak" if some.cell.prefill else "read bandwidth"
        if all(limits):
            fig.add_scatter(x=threads, y=[lim[1] / limits[0][1] for lim in limits], name=f"{what} (roofline)",
                            mode="lines", line={"color": "#b00020", "dash": "dot", "width": 1.5},
                            hovertemplate=what + " x%{y:.2f} at %{x} threads<extra></extra>")
    for p in ports:
        first = views.get((model, p, t0))
        if not first or not first.tok:
            continue
        xs, ys, hover = [], [], []
        for t in threads:
            v = views.get((model, p, t))
            if v and v.tok:
                d = digits(v.tok.mean)
                xs.append(t)
                ys.append(v.tok.mean / first.tok.mean)
                hover.append(f"<b>{label(suite, p)}</b>, {t} threads: x{v.tok.mean / first.tok.mean:.2f}<br>"
                             f"{v.tok.mean:.{d}f} tok/s, 95% CI {interval(v.tok, d)}, n={v.tok.n}<br>"
                             f"raw tok/s:<br>{samples(v.tok_samples, d)}")
        colour, marker = styles[p]
        fig.add_scatter(x=xs, y=ys, name=label(suite, p), mode="lines+markers", hovertext=hover,
                        hovertemplate="%{hovertext}<extra></extra>",
                        line={"color": colour, "width": 2, "dash": "dash" if port_group(suite, p) == "peer" else "solid"},
                        marker={"symbol": PLOTLY_MARKERS[marker], "size": 8})
    fig.update_xaxes(tickvals=threads, title_text="threads")
    return plot(fig, div_id, 420, f"{model}: thread scaling (speed-up over {t0} thread{'s' if t0 > 1 else ''})",
                 f"tok/s relative to {t0} thread{'s' if t0 > 1 else ''}",
                 legend={"orientation": "v", "x": 1.02, "y": 1, "xanchor": "left", "yanchor": "top"})


CHARTS = (tok_chart, time_chart, roof_chart, memory_chart, scaling_chart)  # the page's order
