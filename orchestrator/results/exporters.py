"""Exports of a suite besides its native JSON: CSV (one row per cell), JSON Lines (one object per
measured run), Markdown and hyperfine-compatible JSON.

The CSV and JSONL rows each carry the suite's identity (suite id, start, host, CPU, commit), and
their columns never depend on the suite, so the files of several suites can be concatenated
(`cat a.runs.jsonl b.runs.jsonl`, or CSVs less their repeated header) and still be told apart."""
from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

from schemas.results import Cell, Suite

from .report import render, roofline
from .stats import good_runs, metric, summarize


def _identity(suite: Suite) -> dict:
    """Which suite a row came from: what tells apart the rows of concatenated exports."""
    return {"suite_id": suite.suite_id, "started": suite.started, "hostname": suite.host.hostname,
            "cpu_model": suite.host.cpu_model, "git_commit": suite.host.git_commit}


def to_csv(suite: Suite) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    who = _identity(suite)
    w.writerow([*who, "port", "language", "role", "model", "model_origin", "model_format", "weight_type", "threads", "steps",
                "status", "runs_ok", "tok_s_mean", "tok_s_sd", "tok_s_median", "tok_s_min", "tok_s_max",
                "wall_s_mean", "wall_s_sd", "peak_rss_mib", "load_s_mean", "ttft_s_mean", "roofline_share",
                "reason"])
    for c in suite.cells:
        tok, wall, rss = metric(c, "tok_s"), metric(c, "wall_s"), metric(c, "rss_mib")
        load, ttft = metric(c, "load_s"), metric(c, "ttft_s")
        roof = roofline(suite, c)
        w.writerow([*who.values(), c.port, c.language, c.role, c.model.name, c.model.origin, c.model.format, c.model.weight_type,
                    c.threads, c.steps,
                    c.status, sum(r.ok for r in c.runs),
                    *(f"{v:.4f}" if tok else "" for v in ((tok.mean, tok.sd, tok.median, tok.min, tok.max) if tok else [0] * 5)),
                    f"{wall.mean:.4f}" if wall else "", f"{wall.sd:.4f}" if wall else "",
                    f"{rss.max:.1f}" if rss else "", f"{load.mean:.4f}" if load else "",
                    f"{ttft.mean:.4f}" if ttft else "", f"{roof:.4f}" if roof else "", c.reason])
    return out.getvalue()


# the keys of every line of the per-run export, in order: fixed, so that files append
RUN_KEYS = ("suite_id", "started", "hostname", "cpu_model", "git_commit", "port", "language", "role", "model",
            "model_origin", "model_format", "weight_type", "threads", "steps", "run", "wall_s", "tok_s",
            "max_rss_kib", "max_threads", "ok", "busy", "thread_check", "problem", "text_sha256")


def to_runs_jsonl(suite: Suite) -> str:
    """One flat JSON object per measured run (warmups are left out), every line with RUN_KEYS in
    that order: the raw samples for tools that read rows rather than the nested result file. `run`
    counts from 0 within its cell; `ok` false is a run that does not count (its `problem` says
    why), `busy` true one taken while other processes used the CPU."""
    who = _identity(suite)
    lines = []
    for c in suite.cells:
        for i, r in enumerate(c.runs):
            row = {**who, "port": c.port, "language": c.language, "role": c.role, "model": c.model.name,
                   "model_origin": c.model.origin, "model_format": c.model.format,
                   "weight_type": c.model.weight_type, "threads": c.threads, "steps": c.steps, "run": i,
                   "wall_s": r.wall_s, "tok_s": r.tok_s, "max_rss_kib": r.max_rss_kib,
                   "max_threads": r.max_threads, "ok": r.ok, "busy": r.busy, "thread_check": r.thread_check,
                   "problem": r.problem, "text_sha256": r.text_sha256}
            lines.append(json.dumps({k: row[k] for k in RUN_KEYS}) + "\n")  # the same keys, in the same order
    return "".join(lines)


def hyperfine_label(c: Cell) -> str:
    """A cell as a person names it, e.g. "c stories15M f32 -j 2" (the argv stays in parameters)."""
    return f"{c.port} {c.model.name} {c.model.weight_type} -j {c.threads}"


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
            "command": hyperfine_label(c),
            "mean": wall.mean, "stddev": wall.sd if len(runs) > 1 else None, "median": wall.median,
            "user": summarize([r.user_s for r in runs]).mean, "system": summarize([r.sys_s for r in runs]).mean,
            "min": wall.min, "max": wall.max,
            "times": [r.wall_s for r in runs],
            "exit_codes": [r.returncode for r in runs],
            "memory_usage_byte": [r.max_rss_kib * 1024 for r in runs],
            # hyperfine's parameters are strings; the command line that was timed is one of them
            "parameters": {"port": c.port, "model": c.model.name, "weight_type": c.model.weight_type,
                           "threads": str(c.threads), "argv": shlex.join(c.argv)},
        })
    return json.dumps({"results": results}, indent=1)


def export_all(suite: Suite, json_path: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = json_path.stem
    written = []
    for suffix, text in ((".csv", to_csv(suite)), (".runs.jsonl", to_runs_jsonl(suite)), (".md", to_markdown(suite)),
                         (".hyperfine.json", to_hyperfine(suite))):
        p = out_dir / f"{stem}{suffix}"
        p.write_text(text)
        written.append(p)
    return written
