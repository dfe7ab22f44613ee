"""`invoke bench` as a pipeline: plan -> prepare -> run -> publish.

- plan: the matrix with its overrides, the ports, the models (synthetic where absent), the weight
  types, the output; or, with `--resume FILE`, all of these as that file records them;
- prepare: toolchains (with --install), builds, model files in each port's format and each weight
  type (a q8_0 cell reads the model's Q8_0 GGUF export), the host record;
- validate: the chosen ports against the reference core on stories260K (unless --no-validate),
  kept in the suite; a port that fails is measured all the same, and the report shows it;
- run: interleaved warmups and runs, block by block; the result file is rewritten after every run,
  so Ctrl-C or a crash keeps everything finished, and `--resume` reruns only what did not finish;
- publish: tables, exports and figures.

A port that cannot be installed or built becomes a failed cell with its reason; the others go on.
"""
from __future__ import annotations

import datetime as dt
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from schemas.matrix import Matrix
from schemas.results import Cell, PortInfo, Suite, ValidationRow

from ..errors import UsageError, first_error
from ..models.store import Resolved, Store
from ..models.synth import ensure
from ..ports.build import BuildOutcome, build_port, install_toolchain
from ..ports.discover import IMPLS, ROOT, Port, names, select
from ..ports.validate import FORMATS
from ..ports.validate import validate as validate_against_reference
from ..results import resultfile
from ..results.exporters import export_all
from ..results.figures import draw_all
from ..results.html import write_page
from ..results.report import render
from ..results.summary import describe_peer
from .host import describe_host
from .measure import CellSpec, measure
from .modelfiles import (FORMAT_OF, bytes_per_token, cell_test, cell_types, file_for, flops_per_token, format_for,
                         memory_shortfall,
                         model_record)
from .peercheck import has_check, run_check
from .progress import Planned, Progress, run_cost
from .prompts import prompt_text
from .schedule import interleave

MATRICES = Path(__file__).parent / "matrices.toml"
RESULTS = ROOT / "results"
DEFAULT_MATRIX = "default"
VALIDATION_MODEL = "stories260K"  # the smallest real model: validation before a suite stays quick


# ---------------------------------------------------------------- plan
@dataclass(frozen=True)
class Options:
    """The command line of `invoke bench`, as given (strings; None = not given: the matrix's value,
    or with resume the file's)."""
    matrix: str | None = None  # None: DEFAULT_MATRIX (kept apart so that --resume can tell it was not given)
    ports: str | None = None
    skip: str | None = None
    models: str | None = None
    threads: str | None = None
    runs: str | None = None
    warmup: str | None = None
    steps: str | None = None
    out: str | None = None
    resume: str | None = None  # a result file to continue, with the matrix and ports it records
    install: bool = False
    strict: bool = False
    docker: bool = False
    image: str | None = None
    types: str | None = None
    tests: str | None = None  # tg256,pp512: llama-bench's test names (None: the matrix's, default tg{steps})
    validate: bool = True  # the ports against the reference core before measuring (--no-validate: off)


@dataclass(frozen=True)
class Plan:
    name: str
    matrix: Matrix
    ports: list[Port]
    models: list[Resolved]
    out: Path
    done: dict[tuple, Cell] = field(default_factory=dict)  # finished cells of a resumed suite, by Cell.key
    resumed: Suite | None = None  # the suite being continued, as its file had it

    def blocks(self) -> list[tuple[Resolved, int, str]]:
        """(model, threads, test) with a cell still to run: the ports (and their weight types) in a
        block are compared, so their runs are interleaved."""
        m = self.matrix
        triples = [(r, t, test) for test in m.test_names() for r in self.models for t in m.thread_counts()]
        return [(r, t, test) for r, t, test in triples
                if any((p.name, r.name, wt, t, cell_test(test, r)[0]) not in self.done
                       for p in self.ports for wt in cell_types(p, m, r.name))]



def load_matrix(name: str, overrides: dict, path: Path = MATRICES) -> Matrix:
    named = tomllib.loads(path.read_text())
    if name not in named:
        raise UsageError(f"unknown matrix {name!r}; known: {', '.join(named)}")
    data = {**named[name], **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Matrix(**data)
    except ValidationError as e:
        raise UsageError(f"matrix {name}: {first_error(e)}") from None


def _ints(text, flag):
    if text is None:
        return None
    try:
        return [t if t in ("all", "sweep") else int(t) for t in names(str(text))]
    except ValueError:
        raise UsageError(f"--{flag} expects a comma-separated list of integers, got {text!r}") from None


def _int(text, flag):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--{flag} expects an integer, got {text!r}") from None


def _overrides(o: Options) -> dict:
    """The matrix fields the command line sets (None where a flag was not given)."""
    return {"ports": names(o.ports) or None, "models": names(o.models) or None, "types": names(o.types) or None,
            "threads": _ints(o.threads, "threads"), "runs": _int(o.runs, "runs"),
            "warmup": _int(o.warmup, "warmup"), "steps": _int(o.steps, "steps"), "tests": names(o.tests) or None}


def _models(m: Matrix) -> list[Resolved]:
    store = Store()
    # a GGUF-only shape is made in the weight types the suite reads, and no other (7B: 7 GB each)
    models = [ensure(store, name, types=m.types_for(name)) if m.synthesize else store.resolve(name) for name in m.models]
    for r in models:
        for test in m.test_names():
            if test.startswith("tg") and int(test[2:]) > r.config.seq_len:
                what = test if m.tests else f"steps={m.steps}"
                raise UsageError(f"{what} exceeds {r.name}'s seq_len {r.config.seq_len}")
    return models


def plan(o: Options, matrices: Path = MATRICES, impls: Path = IMPLS) -> Plan:
    """Everything checked before anything is installed, built or run."""
    if o.resume:
        return _resumed(o, impls)
    name = o.matrix or DEFAULT_MATRIX
    m = load_matrix(name, _overrides(o), matrices)
    ports = select(",".join(m.ports) if m.ports else None, impls, skip=o.skip)
    if not ports:
        raise UsageError("no port left to benchmark")
    models = _models(m)
    out = Path(o.out) if o.out else RESULTS / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    return Plan(name, m, ports, models, out)


def _flag_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _resumed(o: Options, impls: Path) -> Plan:
    """`--resume FILE`: the matrix, its name and the ports exactly as the file records them, so the
    file alone continues its suite (the named matrices in matrices.toml may have changed since). A
    flag given beside it must agree with the file: one that does not is refused, not obeyed, since
    it would mix cells measured two ways in one suite."""
    path = Path(o.resume)
    previous = resultfile.load(path)  # missing or not a result file: one PolyllamaError line
    m = previous.matrix
    recorded = [p.name for p in previous.ports]
    clashes = []
    if o.matrix is not None and o.matrix != previous.matrix_name:
        clashes.append(f"--matrix {o.matrix} (the file's: {previous.matrix_name})")
    if o.out is not None and Path(o.out).resolve() != path.resolve():
        clashes.append(f"--out {o.out} (a resumed suite is saved where it was: {path})")
    for key, value in _overrides(o).items():
        if key != "ports" and value is not None and value != getattr(m, key):
            clashes.append(f"--{key} {_flag_text(value)} (the file's: {_flag_text(getattr(m, key))})")
    ports = select(",".join(recorded) if recorded else None, impls)  # a port gone from impls/ is one error line
    if o.ports is not None or o.skip is not None:
        chosen = [p.name for p in select(o.ports or ",".join(recorded), impls, skip=o.skip)]
        if sorted(chosen) != sorted(recorded):
            clashes.append(f"--ports/--skip select {_flag_text(chosen) or 'nothing'} "
                           f"(the file's: {_flag_text(recorded)})")
    if clashes:
        raise UsageError(f"{path} was run with other flags: {'; '.join(clashes)}; "
                         f"give --resume alone to continue it as it was run")
    done = {c.key: c for c in previous.cells if c.status != "incomplete"}
    return Plan(previous.matrix_name, m, ports, _models(m), path, done, previous)


# ---------------------------------------------------------------- prepare
@dataclass(frozen=True)
class Prepared:
    plan: Plan
    builds: dict[str, BuildOutcome]
    suite: Suite  # the header of the result file: host, ports, matrix; cells come in `run`
    files: dict[tuple[str, str], Path]  # (model, format) -> the file every port of that format reads
    runner: object | None = None  # a container runner, or None for native runs
    weight_bytes: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, weight type) -> bytes per token


def _prepare_port(port: Port, install: bool, runner) -> BuildOutcome:
    if runner is not None:
        return runner.build_outcome(port)
    if install:
        tc = install_toolchain(port)
        if tc.status == "failed":
            return BuildOutcome(port.name, "skipped", f"toolchain could not be installed: {tc.detail}")
    return build_port(port)


def prepare(p: Plan, install: bool = False, connect=None, image: str | None = None,
            describe=describe_host) -> Prepared:
    """`connect(image, memory)` returns the container runner of a --docker suite: the caller
    (app.bench, a layer above) passes the container layer's in, so bench never imports it."""
    runner, image_id = None, None
    if connect is not None:
        runner = connect(image, p.matrix.container_memory)
        image_id = runner.image_id
    m = p.matrix
    print(f"matrix {p.name}: {len(p.ports)} ports x {len(p.models)} models x threads {m.thread_counts()} x "
          f"tests {','.join(m.test_names())}, {m.warmup} warmup + {m.runs} runs", flush=True)
    builds, infos = {}, []
    for port in p.ports:
        outcome = _prepare_port(port, install, runner)
        builds[port.name] = outcome
        print(f"  {port.name}: {outcome.status} {'' if outcome.status == 'built' else outcome.detail}", flush=True)
        infos.append(PortInfo(name=port.name, language=port.manifest.language, role=port.manifest.role,
                              toolchain=outcome.version, build_flags=port.manifest.build_flags,
                              build=f"{outcome.status}: {outcome.detail}"))
    # GGUF exports are written here, before any run, so that no conversion lands between measurements
    formats = {r.name: {format_for(port, m, wt) for port in p.ports for wt in cell_types(port, m, r.name)} - {None}
               for r in p.models}
    files = {(r.name, fmt): file_for(r, fmt) for r in p.models for fmt in formats[r.name]}
    without = [port.name for port in p.ports if "q8_0" in m.types and "q8_0" not in cell_types(port, m)]
    if without:
        print(f"  q8_0: no cells for {', '.join(without)} (port.toml does not list gguf-q8_0)", flush=True)
    weight_bytes = {(r.name, wt): bytes_per_token(r, wt, files.get((r.name, FORMAT_OF.get(wt))))
                    for r in p.models for wt in m.types_for(r.name)}
    # one roofline per model size: each model is read from the cache level (or DRAM) its own
    # bytes fit in, so a small model is held against that level's bandwidth, not DRAM's (a Q8_0
    # file is its own size)
    sizes = tuple(sorted(set(weight_bytes.values())))
    print(f"measuring memory read bandwidth over {', '.join(f'{b / 2**20:.1f}' for b in sizes)} MiB ...", flush=True)
    prefill = any(t.startswith("pp") for t in m.test_names())
    if prefill:
        print("measuring the f32 FMA and int8 dot-product peaks ...", flush=True)
    host = describe(m.thread_counts(), image_id, sizes, peaks=prefill)
    # a resumed suite keeps its identity, its start and (until validation runs again) its validation
    before = p.resumed
    suite = Suite(suite_id=before.suite_id if before else p.out.stem,
                  started=before.started if before else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  matrix_name=p.name, matrix=m, host=host, ports=infos, cells=list(p.done.values()),
                  validation=before.validation if before else None)
    return Prepared(p, builds, suite, files, runner, weight_bytes)


# ---------------------------------------------------------------- validate
def validation_formats(p: Plan) -> list[str]:
    """The model formats the suite's cells read (v0, and GGUF or Q8_0 where ports read those):
    what a port is validated on before it is measured."""
    used = {format_for(port, p.matrix, wt) for port in p.ports for wt in cell_types(port, p.matrix)}
    return [f for f in FORMATS if f in used]


def validate_ports(ports: list[Port], formats: list[str], runner=None) -> list[ValidationRow]:
    """The suite's ports against the reference core on stories260K only (ports/validate.py: logits
    at every position, greedy and seeded text), in the formats the suite reads, natively or through
    the container runner the cells will use. `main` takes another function of this signature, so
    tests of the harness with fake ports do not need the reference."""
    rows = validate_against_reference(ports, Store(), [VALIDATION_MODEL], runner=runner, formats=formats,
                                      progress=lambda m: print(f"  {m}", flush=True))
    return [r.record() for r in rows]


def print_validation(rows: list[ValidationRow]) -> None:
    failed = [r for r in rows if not r.ok]
    print(f"validation on {VALIDATION_MODEL}: {len(rows) - len(failed)} passed, {len(failed)} failed", flush=True)
    for r in failed:
        print(f"  FAIL {r.port} on {r.case}: {r.problem}", flush=True)
    if failed:
        print("  (ports that failed are measured all the same; the report shows their failures)", flush=True)


# ---------------------------------------------------------------- run
def block_cells(pr: Prepared, r: Resolved, threads: int, test: str) -> list[tuple[CellSpec, Cell]]:
    """The cells of one (model, threads, test) block still to run, each with the command that
    measures it: one per port and weight type it has cells for (cell_types); a port that did not
    build, or reads none of the model's formats, is a failed cell at once."""
    m, out = pr.plan.matrix, []
    name, steps = cell_test(test, r)
    prefill = name.startswith("pp")
    prompt = prompt_text(str(r.tokenizer), r.config.vocab_size, steps) if prefill else ""
    for port, wt in ((port, wt) for port in pr.plan.ports for wt in cell_types(port, m, r.name)):
        if (port.name, r.name, wt, threads, name) in pr.plan.done:
            continue
        fmt = format_for(port, m, wt)
        model = model_record(r, pr.files.get((r.name, fmt), r.path), fmt or "v0", wt, pr.weight_bytes.get((r.name, wt)))
        spec = CellSpec(port, model, str(r.tokenizer), threads, steps, m.temperature, m.topp, m.seed, prompt, prefill)
        mf, build = port.manifest, pr.builds[port.name]
        cell = Cell(port=mf.name, language=mf.language, role=mf.role, model=model, threads=threads, steps=steps,
                    argv=spec.argv(), status="incomplete", test=name,
                    flops_per_token=flops_per_token(r.config, steps) if prefill else None)
        if build.status != "built":
            cell = cell.model_copy(update={"status": "failed", "argv": [], "reason": f"not built: {build.detail}"})
        elif fmt is None:
            cell = cell.model_copy(update={"status": "failed", "argv": [],
                                           "reason": f"reads none of the formats {mf.formats}"})
        elif prefill and mf.contract < 2:
            cell = cell.model_copy(update={"status": "failed", "argv": [],
                                           "reason": "contract 1: no batched prefill to measure"})
        elif (short := memory_shortfall(Path(model.path), r.config, steps)) is not None:
            cell = cell.model_copy(update={"status": "failed", "argv": [], "reason": short})
        out.append((spec, cell))
    return out


def run_block(cells: list[tuple[CellSpec, Cell]], matrix: Matrix, writer: resultfile.Writer, progress: Progress,
              runner=None) -> None:
    """Interleaved warmups and runs of the cells compared with each other; each run is saved."""
    for cell in (c for _, c in cells):
        writer.put(cell)
    for slot in interleave(len(cells), matrix.warmup, matrix.runs):
        cell = writer.get(cells[slot.cell][1].key)
        spec, key = cells[slot.cell][0], cell.key
        if cell.status == "failed":
            progress.skip(key)
            continue
        progress.step(f"{cell.port} {cell.label} j={cell.threads} {slot.kind} {slot.index + 1}", key)
        run = measure(spec, matrix.timeout_s, runner, matrix.busy_share)
        kind = "warmup" if slot.kind == "warmup" else "runs"
        update = {kind: [*getattr(cell, kind), run]}
        if not run.ok:
            update.update(status="failed", reason=f"{slot.kind} {slot.index + 1}: {run.problem}")
        writer.put(cell.model_copy(update=update))
    for spec, cell in cells:
        current = writer.get(cell.key)
        if current.status != "incomplete":
            continue
        update = {"status": "ok"}
        if has_check(spec.port, current) and runner is None:  # on the cell's own file: a q8_0 cell's Q8_0 GGUF
            check = run_check(spec.port, current, matrix.timeout_s)
            print(f"\n{cell.port} {cell.label} j={cell.threads}: {describe_peer(check)}", flush=True)
            update["peer_check"] = check
        writer.put(current.model_copy(update=update))


def run(pr: Prepared, writer: resultfile.Writer) -> None:
    m = pr.plan.matrix
    blocks = [block_cells(pr, r, t, test) for r, t, test in pr.plan.blocks()]
    # each run weighted by its expected cost (bytes read per token x steps / threads); before the
    # first run ends, the host's one-thread read bandwidth turns that cost into seconds
    planned = [Planned(c.key, m.warmup + m.runs,
                       run_cost(c.model.weight_bytes, c.steps, c.threads, c.prefill), c.threads)
               for b in blocks for _, c in b]
    one = pr.suite.host.bandwidth_gbs.get(1) or max(pr.suite.host.bandwidth_gbs.values(), default=0)
    progress = Progress(planned, prior_s_per_cost=1 / (one * 1e9) if one else None)
    try:
        for cells in blocks:
            run_block(cells, m, writer, progress, pr.runner)
    finally:
        progress.done()


# ---------------------------------------------------------------- publish
def publish(suite: Suite, json_path: Path, out_dir: Path | None = None, html: bool = True,
            validation: Path | None = None) -> None:
    """The tables on stdout; beside the JSON the exports, the figures (PNG and SVG) and, with html,
    one self-contained page (results/html.py) that opens from disk without a network."""
    print(render(suite))
    out_dir = out_dir or json_path.parent
    written = export_all(suite, json_path, out_dir) + draw_all(suite, out_dir, json_path.stem)
    if html:
        written.append(write_page(suite, out_dir / f"{json_path.stem}.html", validation, source=json_path))
    print(f"\nresults: {json_path}")
    for p in written:
        print(f"  {p}")
    if html:
        print(f"open the report: file://{written[-1].resolve()}")


def exit_code(suite: Suite, strict: bool) -> int:
    """0 when something was measured; with strict, only when every cell was."""
    ok = [c for c in suite.cells if c.status == "ok"]
    failed = [c for c in suite.cells if c.status != "ok"]
    if failed:
        print(f"\n{len(failed)} of {len(suite.cells)} cells did not run: "
              + "; ".join(sorted({f'{c.port}: {c.reason}' for c in failed}))[:2000], file=sys.stderr)
    return 1 if not ok or (strict and failed) else 0


def main(o: Options, matrices: Path = MATRICES, impls: Path = IMPLS, describe=describe_host,
         validate=validate_ports, connect=None) -> int:
    """`describe` (the host) and `validate` (validate_ports' signature) are what tests replace;
    `connect` opens the container runner, required with o.docker."""
    if o.docker and connect is None:
        raise UsageError("--docker needs a container runner (invoke bench --docker starts one)")
    p = plan(o, matrices, impls)
    pr = prepare(p, install=o.install, connect=connect if o.docker else None, image=o.image, describe=describe)
    writer = resultfile.Writer(pr.suite, p.out)
    try:
        if o.validate:
            print(f"validating {len(p.ports)} ports on {VALIDATION_MODEL} before measuring ...", flush=True)
            rows = validate(p.ports, validation_formats(p), pr.runner)
            writer.validated(rows)
            print_validation(rows)
        run(pr, writer)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished run is kept in {p.out}; "
              f"continue with: invoke bench --resume {p.out}", file=sys.stderr)
        return 130
    suite = writer.finish()
    publish(suite, p.out)
    return exit_code(suite, o.strict)
