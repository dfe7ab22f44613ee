"""Exports of a suite besides its native JSON: CSV, Markdown and hyperfine-compatible JSON."""
from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

from schemas.results import Suite

from .report import render, roofline
from .stats import good_runs, metric, summarize


def to_csv(suite: Suite) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["port", "language", "role", "model", "model_origin", "model_format", "weight_type", "threads", "steps",
                "status", "runs_ok", "tok_s_mean", "tok_s_sd", "tok_s_median", "tok_s_min", "tok_s_max",
                "wall_s_mean", "wall_s_sd", "peak_rss_mib", "load_s_mean", "ttft_s_mean", "roofline_share",
                "reason"])
    for c in suite.cells:
        tok, wall, rss = metric(c, "tok_s"), metric(c, "wall_s"), metric(c, "rss_mib")
        load, ttft = metric(c, "load_s"), metric(c, "ttft_s")
        roof = roofline(suite, c)
        w.writerow([c.port, c.language, c.role, c.model.name, c.model.origin, c.model.format, c.model.weight_type,
                    c.threads, c.steps,
                    c.status, sum(r.ok for r in c.runs),
                    *(f"{v:.4f}" if tok else "" for v in ((tok.mean, tok.sd, tok.median, tok.min, tok.max) if tok else [0] * 5)),
                    f"{wall.mean:.4f}" if wall else "", f"{wall.sd:.4f}" if wall else "",
                    f"{rss.max:.1f}" if rss else "", f"{load.mean:.4f}" if load else "",
                    f"{ttft.mean:.4f}" if ttft else "", f"{roof:.4f}" if roof else "", c.reason])
    return out.getvalue()


def to_markdown(suite: Suite) -> str:
    return render(suite, fmt="github") + "\n"


def to_hyperfine(suite: Suite) -> str:
    """hyperfine's --export-json layout, one result per cell, times = the wall times of the runs
    that count (failed and busy-machine runs are left out), with their peak memory."""
    results = []
    for c in suite.cells:
        runs = good_runs(c)
        wall = summarize([r.wall_s for r in runs])
        if wall is None:
            continue
        results.append({
            "command": shlex.join(c.argv),
            "mean": wall.mean, "stddev": wall.sd if len(runs) > 1 else None, "median": wall.median,
            "user": summarize([r.user_s for r in runs]).mean, "system": summarize([r.sys_s for r in runs]).mean,
            "min": wall.min, "max": wall.max,
            "times": [r.wall_s for r in runs],
            "exit_codes": [r.returncode for r in runs],
            "memory_usage_byte": [r.max_rss_kib * 1024 for r in runs],
            "parameters": {"port": c.port, "model": c.model.name, "weight_type": c.model.weight_type,
                           "threads": str(c.threads)},
        })
    return json.dumps({"results": results}, indent=1)


def export_all(suite: Suite, json_path: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = json_path.stem
    written = []
    for suffix, text in ((".csv", to_csv(suite)), (".md", to_markdown(suite)), (".hyperfine.json", to_hyperfine(suite))):
        p = out_dir / f"{stem}{suffix}"
        p.write_text(text)
        written.append(p)
    return written
