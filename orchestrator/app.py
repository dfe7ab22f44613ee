"""What the invoke tasks do, one function each; tasks.py only parses flags and calls these.

Every function returns a process exit code and prints its own tables.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from schemas.port import ARCHES

from .bench.lever import LeverCell, measure_lever, to_json
from .bench.measure import CellSpec
from .bench.overhead import measure_overhead
from .bench.pipeline import main as run_bench
from .bench.pipeline import publish
from .containers import podman
from .containers.engine import ContainerRunner
from .containers.engine import build_image as build_container_image
from .errors import PolyllamaError, UsageError
from .files import write_atomic
from .formats import WEIGHT_TYPES
from .models.convert import gguf_to_bin, to_gguf
from .models.fetch import download
from .models.store import MODELS_DIR, Store, search_path
from .models.synth import ensure, synthesize_gguf, synthesize_model, synthesize_tokenizer
from .ports.build import build_all, build_log, install_all
from .ports.discover import ROOT, names, select, tool_env
from .ports.golden import write_all as write_golden
from .ports.validate import save_rows
from .ports.validate import validate as run_validation
from .results import docpage, resultfile
from .results.compare import METRICS
from .results.compare import compare as run_compare
from .results.compare import render as render_comparison


def install(ports: str | None = None, skip: str | None = None) -> int:
    """Install the missing toolchains of the chosen ports; a failure is reported and the rest go on."""
    outcomes = install_all(select(ports, skip=skip))
    print(tabulate([[o.port, o.status, o.version or "-", f"{o.seconds:.0f}s", o.detail] for o in outcomes],
                   headers=["port", "toolchain", "version", "install time", "detail"]))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def build(ports: str | None = None, jobs: int = 2, strict: bool = False, docker: bool = False,
          target: str = "full", arch: str | None = None, platform: str | None = None, skip: str | None = None) -> int:
    """Native builds; with arch the ports' [cross.<arch>] builds (README, "arm64 under emulation")."""
    arch = _arch(arch)
    if platform and not docker:
        raise UsageError("--platform is for --docker image builds; native cross builds use --arch arm64")
    if docker:
        if arch:
            raise UsageError("--arch builds natively with cross toolchains; with --docker use --platform linux/arm64")
        return build_image(target, platform)
    outcomes = build_all(_chosen(ports, skip), jobs, progress=lambda m: print(m, flush=True), arch=arch)
    print(tabulate([[o.port, o.status, o.version or "-", f"{o.seconds:.1f}s", o.detail] for o in outcomes],
                   headers=["port", "status", "toolchain", "time", "detail"]))
    bad = [o for o in outcomes if o.status == "failed" or (strict and o.status == "skipped")]
    for o in bad:  # the whole story, not just its last line: a container build shows nothing else
        log = build_log(o.port.split("/")[0], arch)
        if o.status == "failed" and log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-60:]
            print(f"\n--- last {len(tail)} lines of {log.relative_to(ROOT)} ---\n" + "\n".join(tail), file=sys.stderr)
    return 1 if bad else 0


def _chosen(ports: str | None, skip: str | None):
    """--ports less --skip, the same on every task; leaving nothing is a mistake, not an empty run."""
    chosen = select(ports, skip=skip)
    if not chosen:
        raise UsageError("--skip leaves no port" if skip else "no port chosen")
    return chosen


def _arch(arch: str | None) -> str | None:
    """None for a native run; else an architecture a manifest's [cross] may name."""
    if not arch or arch == "native":
        return None
    if arch not in ARCHES:
        raise UsageError(f"--arch must be native or one of {', '.join(ARCHES)}, got {arch!r}")
    return arch


@contextlib.contextmanager
def container_engine(wanted: bool = True):
    """DOCKER_HOST for the block when containers are wanted: Docker, or podman's service for the
    duration (orchestrator/containers/podman.py); one error line when there is neither."""
    if not wanted:
        yield
        return
    with podman.engine() as why:
        if why:
            raise PolyllamaError(why)
        yield


def build_image(target: str, platform: str | None = None) -> int:

    with container_engine():
        tag = build_container_image(target, platform=platform)
        runner = ContainerRunner.connect(tag)
        built = runner.built_ports()
    print(f"image {tag} ({runner.image_id[:19]}) holds: " + ", ".join(f"{k} ({v})" for k, v in built.items()))
    return 0


def validate(ports: str | None = None, models: str | None = None, docker: bool = False, image: str | None = None,
             arch: str | None = None, out: str | None = None, skip: str | None = None) -> int:
    """With arch: each port's [cross.<arch>] build, run under its emulator, against the native reference.
    With out: the rows are also saved there as JSON (ports/validate.py, rows_json), failures included."""
    arch = _arch(arch)
    if docker and arch:
        raise UsageError("--arch runs the cross builds under emulation here; it does not combine with --docker")
    out_path = _out_file(out)
    with container_engine(docker):
        return _validate(ports, models, docker, image, arch, out_path, skip)


def _out_file(out: str | None) -> Path | None:
    """--out is always the one file a task writes: refused at once when it names a folder, rather
    than after the work it would have saved."""
    if not out:
        return None
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out names the file to write; {out} is a folder")
    return path


def _validate(ports, models, docker, image, arch=None, out: Path | None = None, skip: str | None = None) -> int:

    chosen = _chosen(ports, skip)
    wanted = names(models) or ["stories260K", "stories15M"]
    runner = None
    if docker:
        runner = ContainerRunner.connect(image)
        chosen = [p for p in chosen if runner.build_outcome(p).status == "built"] if not ports else chosen
    if arch:
        for p in chosen:
            if p.for_arch(arch) is None:
                print(f"{p.name}/{arch}: skipped: {p.no_cross_reason(arch)}", flush=True)
        chosen = [c for p in chosen if (c := p.for_arch(arch)) is not None]
    rows = run_validation(chosen, Store(), wanted, progress=lambda m: print(m, flush=True), runner=runner,
                          emulated=arch is not None)
    print(tabulate([r.as_dict() for r in rows], headers="keys"))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    if out is not None:
        save_rows(rows, out)
        print(f"rows: {out}")
    return 1 if failed or not rows else 0


def port_tests(ports: str | None = None, skip: str | None = None) -> int:
    """Each port's own unit tests, in its own language's runner, for the ports that are built."""
    failed = 0
    for port in select(ports, skip=skip):
        if not port.manifest.test.commands:
            continue
        if not port.outputs_present():
            print(f"{port.name}: not built, its unit tests are not run")
            failed += 1
            continue
        for cmd in port.manifest.test.commands:
            argv = port.expand(cmd)
            print(f"[{port.name}] $ {' '.join(cmd)}", flush=True)
            r = subprocess.run(argv, cwd=port.dir, env=tool_env(), stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                print(f"[{port.name}] unit tests FAILED (exit {r.returncode})")
                failed += 1
                break
    return 1 if failed else 0


def pytest(args: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=tool_env()).returncode


def golden() -> int:

    for path in write_golden(Store(), MODELS_DIR):
        print(path.relative_to(ROOT))
    return 0


def models_list() -> int:
    print(tabulate(Store().listing(), headers="keys"))
    print("\nsearch path: " + os.pathsep.join(str(p) for p in search_path()))
    return 0


def models_fetch(models: str) -> int:

    store = Store()
    for name in names(models):
        entry = store.entry(name)
        print(download(entry))
        print(download(store.tokenizers[entry.tokenizer]))
    return 0


def models_synth(models: str, seed: int, types: str | None = None) -> int:
    """llama2.c models as a .bin; GGUF-only shapes as one GGUF per weight type (`types`, default f16)."""
    store = Store()
    for name in names(models):
        if store.entry(name).gguf:
            for t in names(types or "f16"):
                print(f"{name}: {synthesize_gguf(store, name, t, seed)}")
            continue
        if types:
            raise UsageError(f"--types is for GGUF-only shapes; {name} is a llama2.c .bin "
                             f"(`invoke models.convert` writes its GGUF in any type)")
        print(f"{name}: {synthesize_model(store, name, seed)}")
        tok, origin = store.find_tokenizer(store.entry(name).tokenizer)
        if tok is None:
            print(f"  tokenizer: {synthesize_tokenizer(store, store.entry(name).tokenizer, seed)} (synthetic)")
        else:
            print(f"  tokenizer: {tok} ({origin})")
    return 0


def models_convert(src: str, dst: str, tokenizer: str | None, version: int, weight_type: str = "f32") -> int:
    """To GGUF (F32, or Q8_0, F16 or BF16 with weight_type q8_0, f16, bf16) when dst ends in .gguf, else
    to a llama2.c .bin."""

    if weight_type not in WEIGHT_TYPES:
        raise UsageError(f"--type must be one of {', '.join(WEIGHT_TYPES)}, got {weight_type!r}")
    if dst.endswith(".gguf"):
        to_gguf(Path(src), Path(dst), Path(tokenizer) if tokenizer else None, weight_type)
    elif weight_type != "f32":
        raise UsageError(f"--type {weight_type} writes GGUF: give an output path ending in .gguf")
    else:
        gguf_to_bin(Path(src), Path(dst), Path(tokenizer) if tokenizer else None, version)
    print(dst)
    return 0


def _thread_counts(threads: str) -> list[int]:
    return [os.cpu_count() or 1 if t == "all" else int(t) for t in names(threads)]


def overhead(port: str, models: str, threads: str, steps: int, rounds: int) -> int:
    """Our executor against hyperfine, cell by cell: wall time and the port's decode rate."""

    chosen = select(port)
    if len(chosen) != 1:
        raise UsageError(f"--port takes one port, got {port!r}")
    [p] = chosen
    counts = _thread_counts(threads)
    rows, worst = [], 0.0
    for model in names(models):
        r = ensure(Store(), model)
        for t in counts:
            spec = CellSpec.greedy(p, r, t, steps)
            print(f"{port} on {model} ({r.origin}), -j {t}, {spec.steps} steps, {rounds} paired rounds ...", flush=True)
            res = measure_overhead(spec.argv(), p.dir, rounds)
            wall, tok = res["wall"], res["tok_s"]
            worst = max(worst, wall.high - 1, (tok.high - 1) if tok else 0.0)
            rows.append([model, t, f"{statistics.median(res['harness_times']):.3f}",
                         f"{statistics.median(res['hyperfine_times']):.3f}", wall.fmt_pct(),
                         tok.fmt_pct() if tok else "-", wall.n])
    print(tabulate(rows, headers=["model", "threads", "harness median s", "hyperfine median s",
                                  "wall-time cost [95% CI]", "tok/s cost [95% CI]", "n"]))
    print(f"\nworst upper bound: {100 * worst:+.2f}% (goal: at most 1%)")
    return 0


def lever(ports: str, env: str, models: str, threads: str, steps: int, rounds: int, out: str | None,
          types: str = "f32", skip: str | None = None) -> int:
    """A lever's effect per port and cell: paired runs with the lever off (env) and on."""

    try:
        off_env = dict(kv.split("=", 1) for kv in names(env))
    except ValueError:
        raise UsageError(f"--env takes NAME=VALUE[,NAME=VALUE], got {env!r}") from None
    out_path = _out_file(out)
    chosen = _chosen(ports, skip)
    resolved = [ensure(Store(), m) for m in names(models)]
    weight_types = names(types)
    if bad := [t for t in weight_types if t not in WEIGHT_TYPES]:
        raise UsageError(f"--types takes {', '.join(WEIGHT_TYPES)}, got {', '.join(bad)}")
    cells = [LeverCell(f"{p.name} {r.name}{'' if w == 'f32' else ' ' + w} -j {t}",
                       CellSpec.greedy(p, r, t, steps, w).argv(), str(p.dir))
             for p in chosen for r in resolved for w in weight_types for t in _thread_counts(threads)]
    measure_lever(cells, off_env, rounds, log=lambda m: print(m, flush=True))
    rows = [[c.label, f"{statistics.median(c.off):.1f}", f"{statistics.median(c.on):.1f}",
             (c.ratio().fmt() if c.ratio() else "-"), len(c.on)] for c in cells]
    print(tabulate(rows, headers=["cell", f"off ({env}) median tok/s", "on median tok/s", "on/off [95% CI]", "n"]))
    if out_path is not None:
        write_atomic(out_path, to_json(cells, off_env))
        print(f"samples: {out_path}")
    return 0


def bench(options) -> int:

    with container_engine(options.docker):
        return run_bench(options, connect=ContainerRunner.connect if options.docker else None)


def report(results: str, exports_dir: str | None = None, html: bool = False, validation: str | None = None,
           docs: str | None = None) -> int:
    """Tables, exports and figures of a saved suite, into exports_dir (default: beside the JSON);
    with html (or a validation file) also the page <suite>.html, with the rows of `invoke validate`
    when a JSON of them is given; with docs, the suite's block of that markdown page
    (results/docpage.py)."""

    path = Path(results)
    folder = Path(exports_dir) if exports_dir else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UsageError(f"--exports-dir names a folder; {exports_dir} is a file")
    suite = resultfile.load(path)
    publish(suite, path, folder, html=html or bool(validation),
            validation=Path(validation) if validation else None)
    if docs:
        source = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(docpage.update(Path(docs), suite, source.as_posix()))
    return 0


def compare(a: str, b: str, metric: str = "tok_s", threshold: float = 0.05) -> int:
    """Exit 1 when a cell regressed beyond the threshold and beyond the noise."""

    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    sa, sb = resultfile.load(a), resultfile.load(b)
    verdict = run_compare(sa, sb, metric, threshold)
    print(render_comparison(sa, sb, verdict, metric))
    return 1 if verdict.regressions else 0
