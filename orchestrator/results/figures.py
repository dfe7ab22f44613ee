"""The study's figures as PNG and SVG (for papers and the README), from a saved suite: per model,
tokens per second and time per inference per port, every thread count side by side, with 95%
intervals; and a thread-scaling plot.

Also the presentation shared with the HTML page (results/html.py): the port groups (compiled,
managed, Python and frameworks, peer) and their order, one colour and marker per port, the 95%
interval of a mean, and the footer that says where the figures come from.
"""
from __future__ import annotations

import math
from pathlib import Path

from schemas.results import Suite

from .report import models_of
from .stats import Summary, geometric_mean, metric

# ---------------------------------------------------------------- groups and order
GROUP_ORDER = ("compiled", "managed", "python", "peer")
GROUP_TITLES = {"compiled": "compiled", "managed": "managed (Go, Java)", "python": "Python and frameworks",
                "peer": "peer"}
# the first word of a port's language (port.toml) -> its group; any other language is compiled
LANGUAGE_GROUPS = {"go": "managed", "java": "managed", "kotlin": "managed", "scala": "managed", "c#": "managed",
                   "python": "python"}


def group_of(language: str, role: str) -> str:
    """compiled / managed / python / peer, from the port's role and the first word of its language."""
    if role == "peer":
        return "peer"
    if role == "reference":
        return "python"
    word = (language or "").lower().replace("(", " ").split()
    return LANGUAGE_GROUPS.get(word[0] if word else "", "compiled")


def _port_groups(suite: Suite) -> dict[str, str]:
    groups = {p.name: group_of(p.language, p.role) for p in suite.ports}
    for c in suite.cells:
        groups.setdefault(c.port, group_of(c.language, c.role))
    return groups


def ordered_ports(suite: Suite, model: str | None = None) -> list[str]:
    """Ports by group, then fastest first (geometric mean of tok/s over the thread counts), then name;
    ports with nothing measured last in their group."""
    groups = _port_groups(suite)
    cells = [c for c in suite.cells if model is None or c.label == model]
    speed = {}
    for port in {c.port for c in cells}:
        means = [s.mean for c in cells if c.port == port and c.status == "ok" and (s := metric(c, "tok_s"))]
        speed[port] = geometric_mean(means) or 0.0
    return sorted(speed, key=lambda p: (GROUP_ORDER.index(groups.get(p, "compiled")), -speed[p], p))


def port_group(suite: Suite, port: str) -> str:
    return _port_groups(suite).get(port, "compiled")


# ---------------------------------------------------------------- colours and markers
# tab10, then ten more that are distinguishable from it; markers change with the colour too,
# so that even neighbouring colours differ in shape
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#6baed6", "#fdae6b", "#74c476",
           "#fb6a4a", "#9e9ac8")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*")
PLOTLY_MARKERS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down",
                  "P": "cross", "X": "x", "<": "triangle-left", ">": "triangle-right", "h": "hexagon",
                  "*": "star"}


def port_styles(suite: Suite) -> dict[str, tuple[str, str]]:
    """port -> (colour, matplotlib marker), the same in every figure of a suite (and the page)."""
    groups = _port_groups(suite)
    ports = sorted(groups, key=lambda p: (GROUP_ORDER.index(groups[p]), p))
    return {p: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, p in enumerate(ports)}


def thread_colours(n: int) -> list[str]:
    """n blues from light to dark: more threads, darker bars."""
    light, dark = (0x9e, 0xca, 0xe1), (0x08, 0x30, 0x6b)
    out = []
    for k in range(n):
        f = k / (n - 1) if n > 1 else 0.6
        out.append("#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(light, dark)))
    return out


# ---------------------------------------------------------------- numbers
def ci95(s: Summary | None) -> float | None:
    """Half-width of the 95% confidence interval of the mean (Student t); None when n < 2."""
    if s is None or s.n < 2:
        return None
    from scipy import stats as st  # lazy, as in stats.py
    return float(st.t.ppf(0.975, s.n - 1) * s.sd / math.sqrt(s.n))


def footer(suite: Suite) -> str:
    """Where the figures come from: host, date, commit, steps."""
    h = suite.host
    steps = "/".join(str(s) for s in sorted({c.steps for c in suite.cells})) or str(suite.matrix.steps)
    dirty = " (dirty)" if h.git_dirty else ""
    return (f"{h.cpu_model}, {h.logical_cores} cores, {h.os.split(' (')[0]} | {suite.started[:10]} | "
            f"commit {h.git_commit[:10]}{dirty} | {steps} steps | matrix {suite.matrix_name}")


def _label(suite: Suite, port: str) -> str:
    return f"{port} (peer)" if port_group(suite, port) == "peer" else port


def _caption(ns: list[int]) -> str:
    if not ns:
        return "no runs"
    n = f"n = {min(ns)}" if min(ns) == max(ns) else f"n = {min(ns)}-{max(ns)}"
    return (f"error bars: 95% confidence interval of the mean (Student t); {n} good runs per bar"
            + ("; no bar for n = 1" if min(ns) < 2 else ""))


# ---------------------------------------------------------------- matplotlib
def _figure(width: float, height: float):
    import matplotlib  # lazy: heavy, and only figures need it; Agg before anything else touches it
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "polyllama"  # the same SVG for the same suite
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, editable for a paper
    return Figure(figsize=(width, height))


def _save(fig, path: Path) -> list[Path]:
    """PNG and SVG, legends and footer included (bbox tight)."""
    svg = path.with_suffix(".svg")
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return [path, svg]


def bars_figure(suite: Suite, model: str, name: str, ylabel: str):
    """Per port (grouped, fastest first) one bar per thread count: the mean of metric `name` over
    the good runs, with its 95% interval; None when the model has no cells."""
    cells = [c for c in suite.cells if c.label == model]
    ports = ordered_ports(suite, model)
    threads = sorted({c.threads for c in cells})
    if not ports:
        return None
    groups = [port_group(suite, p) for p in ports]
    fig = _figure(max(6.5, 0.5 * len(ports) * max(1, len(threads) * 0.7) + 2.5), 5.2)
    ax = fig.add_subplot()
    width = 0.8 / len(threads)
    ns, failed = [], []
    for k, (t, colour) in enumerate(zip(threads, thread_colours(len(threads)))):
        means, errs = [], []
        for i, p in enumerate(ports):
            cell = next((c for c in cells if c.port == p and c.threads == t), None)
            s = metric(cell, name) if cell and cell.status == "ok" else None  # a failed cell: no bar
            means.append(s.mean if s else math.nan)
            errs.append(ci95(s) or 0.0)
            if s:
                ns.append(s.n)
            elif cell is not None:
                failed.append(i + (k - (len(threads) - 1) / 2) * width)
        xs = [i + (k - (len(threads) - 1) / 2) * width for i in range(len(ports))]
        bars = ax.bar(xs, means, width, yerr=errs, capsize=2.5, color=colour, edgecolor="#333333", linewidth=0.4,
                      error_kw={"elinewidth": 0.9}, label=f"{t} thread{'s' if t > 1 else ''}")
        for bar, g in zip(bars, groups):
            if g == "peer":
                bar.set_hatch("//")
    for x in failed:
        ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="#b00020")
    # the groups: a dotted line between them, their title above
    for i in range(1, len(ports)):
        if groups[i] != groups[i - 1]:
            ax.axvline(i - 0.5, color="#999999", linestyle=":", linewidth=0.8)
    start = 0
    for i in range(1, len(ports) + 1):
        if i == len(ports) or groups[i] != groups[start]:
            ax.text((start + i - 1) / 2, 1.01, GROUP_TITLES[groups[start]], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="#555555")
            start = i
    ax.set_xticks(range(len(ports)), [_label(suite, p) for p in ports], rotation=30, ha="right")
    ax.set_xlim(-0.6, len(ports) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    ax.set_axisbelow(True)
    origin = cells[0].model.origin
    ax.set_title(f"{model} ({origin} weights): {ylabel}", pad=16)
    ax.legend(title="threads", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    fig.text(0.01, -0.02, _caption(ns) + "\n" + footer(suite), fontsize=7, color="#444444", va="top")
    return fig


def scaling_figure(suite: Suite):
    """tok/s against threads, one panel per model, one line (colour and marker) per port, with the
    ideal scaling of the fastest port at the lowest count; None with fewer than two thread counts."""
    models = models_of(suite)
    threads = sorted({c.threads for c in suite.cells})
    if not models or len(threads) < 2:
        return None
    styles = port_styles(suite)
    fig = _figure(4.6 * len(models) + 2.2, 4.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    handles, ns = {}, []
    for ax, model in zip(axes, models):
        best = None
        for port in ordered_ports(suite, model):
            pts = sorted((c.threads, metric(c, "tok_s")) for c in suite.cells
                         if c.label == model and c.port == port and c.status == "ok")
            pts = [(t, s) for t, s in pts if s]
            if not pts:
                continue
            ns += [s.n for _, s in pts]
            colour, marker = styles[port]
            line = ax.errorbar([t for t, _ in pts], [s.mean for _, s in pts], yerr=[ci95(s) or 0.0 for _, s in pts],
                               color=colour, marker=marker, markersize=5, linewidth=1.2, capsize=2,
                               linestyle="--" if port_group(suite, port) == "peer" else "-")
            handles.setdefault(_label(suite, port), line)
            if pts[0][0] == threads[0] and (best is None or pts[0][1].mean > best):
                best = pts[0][1].mean
        if best:
            ax.plot(threads, [best * t / threads[0] for t in threads], color="#888888", linestyle=":", linewidth=1)
        ax.set_title(model)
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens per second")
        ax.set_xticks(threads)
        ax.set_xticklabels([str(t) for t in threads])
        ax.set_ylim(bottom=0)
        ax.grid(linewidth=0.4, alpha=0.6)
    from matplotlib.lines import Line2D  # lazy, as in _figure
    handles["ideal scaling of the fastest port"] = Line2D([], [], color="#888888", linestyle=":")
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper left", bbox_to_anchor=(1.0, 0.95),
               frameon=False, fontsize=8)
    fig.tight_layout()
    fig.text(0.01, -0.02, _caption(ns) + "\n" + footer(suite), fontsize=7, color="#444444", va="top")
    return fig


def draw_all(suite: Suite, out_dir: Path, stem: str) -> list[Path]:
    """Per model a tok/s and a time-per-inference figure, and the thread scaling; PNG and SVG each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for model in models_of(suite):  # "stories15M", "stories15M q8_0": a file name without spaces
        slug = model.replace(" ", "-")
        figures.append((bars_figure(suite, model, "tok_s", "tokens per second"), f"{stem}-{slug}-toks.png"))
        figures.append((bars_figure(suite, model, "wall_s", "time per inference (s)"), f"{stem}-{slug}-time.png"))
    figures.append((scaling_figure(suite), f"{stem}-scaling.png"))
    return [p for fig, name in figures if fig is not None for p in _save(fig, out_dir / name)]
