"""The study's figures, from a saved suite: per model, average tokens per second and average time
per inference per implementation, single- and multi-threaded side by side with error bars; and a
thread-scaling plot."""
from __future__ import annotations

from pathlib import Path

from schemas.results import Suite

from .report import models_of
from .stats import metric


def _bars(suite: Suite, model: str, name: str, ylabel: str, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in suite.cells if c.model.name == model]
    ports = sorted({c.port for c in cells})
    threads = sorted({c.threads for c in cells})
    if not ports:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(ports) + 2), 4.5))
    width = 0.8 / len(threads)
    for k, t in enumerate(threads):
        means, errs = [], []
        for p in ports:
            cell = next((c for c in cells if c.port == p and c.threads == t), None)
            s = metric(cell, name) if cell else None
            means.append(s.mean if s else 0)
            errs.append(s.sd if s else 0)
        xs = [i + (k - (len(threads) - 1) / 2) * width for i in range(len(ports))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=f"{t} thread{'s' if t > 1 else ''}")
    peers = {c.port for c in cells if c.role == "peer"}
    ax.set_xticks(range(len(ports)), [f"{p} (peer)" if p in peers else p for p in ports], rotation=30, ha="right")
    origin = cells[0].model.origin
    ax.set_title(f"{model} ({origin} weights): {ylabel}")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scaling(suite: Suite, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = models_of(suite)
    if not models or len({c.threads for c in suite.cells}) < 2:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for port in sorted({c.port for c in suite.cells if c.model.name == model}):
            pts = sorted((c.threads, metric(c, "tok_s")) for c in suite.cells
                         if c.model.name == model and c.port == port)
            pts = [(t, s.mean) for t, s in pts if s]
            if pts:
                ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", label=port)
        ax.set_title(model)
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens/s")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(suite: Suite, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in models_of(suite):
        paths.append(_bars(suite, model, "tok_s", "tokens per second", out_dir / f"{stem}-{model}-toks.png"))
        paths.append(_bars(suite, model, "wall_s", "time per inference (s)", out_dir / f"{stem}-{model}-time.png"))
    paths.append(_scaling(suite, out_dir / f"{stem}-scaling.png"))
    return [p for p in paths if p]
