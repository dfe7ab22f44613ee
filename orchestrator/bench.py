"""`invoke bench`: matrix -> models -> builds -> host -> interleaved runs -> result file -> reports.

The result file is rewritten (atomically) after every round of runs, so Ctrl-C or a crash keeps
everything finished; `--resume` reruns only the cells that did not finish.
"""
from __future__ import annotations

import datetime as dt
import sys
import tomllib
from pathlib import Path

from pydantic import ValidationError

from schemas.matrix import Matrix
from schemas.results import Cell, Model, PortInfo, Suite

from . import resultfile
from .build import build_port
from .convert import gguf_for
from .errors import UsageError
from .exporters import export_all
from .figures import draw_all
from .host import describe_host
from .measure import CellSpec, measure
from .ports import ROOT, Port, select
from .progress import Progress
from .report import render
from .schedule import interleave
from .store import Resolved, Store

MATRICES = Path(__file__).parent / "matrices.toml"
RESULTS = ROOT / "results"


def load_matrix(name: str, overrides: dict, path: Path = MATRICES) -> Matrix:
    named = tomllib.loads(path.read_text())
    if name not in named:
        raise UsageError(f"unknown matrix {name!r}; known: {', '.join(named)}")
    data = {**named[name], **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Matrix(**data)
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"matrix {name}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _csv(text, kind=str):
    if text is None:
        return None
    try:
        return [t.strip() if kind is str else (t.strip() if t.strip() in ("all", "sweep") else int(t))
                for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"expected a comma-separated list of integers, got {text!r}") from None


def _int(text, flag):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--{flag} expects an integer, got {text!r}") from None


def model_record(resolved: Resolved, path: Path, fmt: str) -> Model:
    return Model(name=resolved.name, path=str(path), origin=resolved.origin, tokenizer_origin=resolved.tokenizer_origin,
                 format=fmt, weight_bytes=resolved.config.weight_bytes())


def _format_for(port: Port, matrix: Matrix) -> str | None:
    if matrix.model_format == "gguf" or not port.reads("v0"):
        return "gguf" if port.reads("gguf") else None
    return "v0"


def _failed(port: Port, model: Model, threads: int, steps: int, reason: str) -> Cell:
    m = port.manifest
    return Cell(port=m.name, language=m.language, role=m.role, model=model, threads=threads, steps=steps,
                argv=[], status="failed", reason=reason)


def run_block(specs: list[CellSpec], cells: list[Cell], matrix: Matrix, save, progress,
              runner=None) -> list[Cell]:
    """Interleaved warmups and runs for cells compared with each other; returns finished cells."""
    slots = interleave(len(specs), matrix.warmup, matrix.runs)
    for slot in slots:
        cell = cells[slot.cell]
        if cell.status == "failed":
            progress.skip()
            continue
        progress.step(f"{cell.port} {cell.model.name} j={cell.threads} {slot.kind} {slot.index + 1}")
        run = measure(specs[slot.cell], matrix.timeout_s, runner)
        if slot.kind == "warmup":
            cell = cell.model_copy(update={"warmup": cell.warmup + [run]})
        else:
            cell = cell.model_copy(update={"runs": cell.runs + [run]})
        if not run.ok:
            cell = cell.model_copy(update={"status": "failed", "reason": f"{slot.kind} {slot.index + 1}: {run.problem}"})
        cells[slot.cell] = cell
        save(cells)
    return [c if c.status == "failed" else c.model_copy(update={"status": "ok"}) for c in cells]


def main(matrix="quick", ports=None, models=None, threads=None, runs=None, warmup=None, steps=None, out=None,
         resume=False, docker=False, image=None, matrices_file: Path = MATRICES) -> int:
    overrides = {"ports": _csv(ports), "models": _csv(models), "threads": _csv(threads, int),
                 "runs": _int(runs, "runs"), "warmup": _int(warmup, "warmup"), "steps": _int(steps, "steps")}
    m = load_matrix(matrix, overrides, matrices_file)
    chosen = select(",".join(m.ports) if m.ports else None)
    store = Store()
    resolved = [store.resolve(name, synthesize=m.synthesize) for name in m.models]
    for r in resolved:
        if m.steps > r.config.seq_len:
            raise UsageError(f"steps={m.steps} exceeds {r.name}'s seq_len {r.config.seq_len}")

    runner, image_id = None, None
    if docker:
        from .containers import ContainerRunner
        runner = ContainerRunner.connect(image, m.container_memory)
        image_id = runner.image_id

    print(f"matrix {matrix}: {len(chosen)} ports x {len(resolved)} models x threads {m.thread_counts()}, "
          f"{m.warmup} warmup + {m.runs} runs, {m.steps} steps", flush=True)
    builds, infos = {}, []
    for port in chosen:
        outcome = build_port(port) if runner is None else runner.build_outcome(port)
        builds[port.name] = outcome
        print(f"  {port.name}: {outcome.status} {'' if outcome.status == 'built' else outcome.detail}", flush=True)
        infos.append(PortInfo(name=port.name, language=port.manifest.language, role=port.manifest.role,
                              toolchain=outcome.version, build_flags=port.manifest.build_flags,
                              build=f"{outcome.status}: {outcome.detail}"))
    # the roofline is measured over as many bytes as the largest model reads per token, so that
    # hosts with huge caches are not credited with DRAM speed they never reach (or vice versa)
    probe_mib = max(256, max(r.config.weight_bytes() for r in resolved) >> 20)
    print(f"measuring memory read bandwidth over {probe_mib} MiB ...", flush=True)
    host = describe_host(m.thread_counts(), image_id, probe_mib)

    out_path = Path(out) if out else RESULTS / f"{matrix}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    done: dict[tuple, Cell] = {}
    if resume:
        previous = resultfile.load(out_path)
        if previous.matrix != m:
            raise UsageError(f"{out_path} was run with another matrix; resume needs the same flags")
        done = {(c.port, c.model.name, c.threads): c for c in previous.cells if c.status != "incomplete"}
    suite = Suite(suite_id=out_path.stem, started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  matrix_name=matrix, matrix=m, host=host, ports=infos, cells=list(done.values()))

    blocks = [(r, t) for r in resolved for t in m.thread_counts()]
    todo = [(r, t) for r, t in blocks if any((p.name, r.name, t) not in done for p in chosen)]
    progress = Progress(sum((m.warmup + m.runs) * len(chosen) for _ in todo))
    finished: list[Cell] = list(done.values())
    try:
        for r, t in todo:
            specs, cells = [], []
            for port in chosen:
                if (port.name, r.name, t) in done:
                    continue
                fmt = _format_for(port, m)
                path = gguf_for(r) if fmt == "gguf" else r.path
                model = model_record(r, path, fmt or "v0")
                spec = CellSpec(port, model, str(r.tokenizer), t, m.steps, m.temperature, m.topp, m.seed)
                specs.append(spec)
                if builds[port.name].status != "built":
                    cells.append(_failed(port, model, t, m.steps, f"not built: {builds[port.name].detail}"))
                elif fmt is None:
                    cells.append(_failed(port, model, t, m.steps, f"reads none of the formats {port.manifest.formats}"))
                else:
                    mf = port.manifest
                    cells.append(Cell(port=mf.name, language=mf.language, role=mf.role, model=model, threads=t,
                                      steps=m.steps, argv=spec.argv(), status="incomplete"))

            def save(current, _finished=finished):
                nonlocal suite
                suite = suite.model_copy(update={"cells": _finished + list(current)})
                resultfile.save(suite, out_path)

            finished += run_block(specs, cells, m, save, progress, runner)
            save([])
    except KeyboardInterrupt:
        progress.done()
        print(f"\ninterrupted: {len(finished)} finished cells kept in {out_path}; "
              f"continue with --resume --out {out_path}", file=sys.stderr)
        return 130
    progress.done()
    suite = suite.model_copy(update={"cells": finished,
                                     "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    resultfile.save(suite, out_path)
    return publish(suite, out_path)


def publish(suite: Suite, json_path: Path, out_dir: Path | None = None) -> int:
    print(render(suite))
    out_dir = out_dir or json_path.parent
    written = export_all(suite, json_path, out_dir) + draw_all(suite, out_dir, json_path.stem)
    print(f"\nresults: {json_path}")
    for p in written:
        print(f"  {p}")
    failed = [c for c in suite.cells if c.status != "ok"]
    return 1 if failed else 0


def report(results: str, out: str | None = None) -> int:
    path = Path(results)
    suite = resultfile.load(path)
    publish(suite, path, Path(out) if out else None)
    return 0


def compare(a: str, b: str) -> int:
    from .compare import render as render_compare

    print(render_compare(resultfile.load(a), resultfile.load(b)))
    return 0
