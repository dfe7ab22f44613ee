"""polyllama's entry points. Thin on purpose: the logic lives in `orchestrator/`."""
from __future__ import annotations

import functools
import sys

from invoke import Collection, Exit, task

from orchestrator import app
from orchestrator.errors import PolyllamaError, UsageError

PORTS_HELP = "comma-separated port names (default: every port under impls/)"


def _exits(fn):
    """Run an app function; its exit code, or one error line, ends the task."""
    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        try:
            code = fn(c, *args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            raise Exit(code=2)
        except PolyllamaError as e:
            print(f"error: {e}", file=sys.stderr)
            raise Exit(code=1)
        if code:
            raise Exit(code=code)
    return wrapper


@task(help={"ports": PORTS_HELP, "skip": "comma-separated ports to leave out"})
@_exits
def install(c, ports=None, skip=None):
    """Install the missing toolchains of the ports (only those whose check fails), from package registries."""
    return app.install(ports, skip)


@task(help={"ports": PORTS_HELP, "jobs": "build parallelism passed to each port's build",
            "strict": "fail when a port is skipped for a missing toolchain",
            "docker": "build the Dockerfile's image instead (tagged polyllama:<commit>)",
            "target": "with --docker: the Dockerfile stage to build (full, or slim = reference + C)",
            "arch": "arm64: the ports' [cross.arm64] builds, made with cross toolchains (scripts/arm64-setup.sh)",
            "platform": "with --docker: linux/arm64 builds the image for arm64 under qemu "
                        "(base image: scripts/podman-setup.sh --arch arm64)"})
@_exits
def build_all(c, ports=None, jobs=2, strict=False, docker=False, target="full", arch=None, platform=None):
    """Build every port natively (or the container image); report what was built, skipped and why, or failed."""
    return app.build(ports, int(jobs), strict, docker, target, arch, platform)


@task(help={"ports": PORTS_HELP,
            "models": "comma-separated models (default: stories260K,stories15M; synthetic when not present)",
            "docker": "run the ports inside the container image (DOCKER_HOST selects the engine)",
            "image": "with --docker: the image (default polyllama:<commit>, or $POLYLLAMA_IMAGE)",
            "arch": "arm64: run the ports' arm64 builds under qemu-aarch64 (stories15M: 8 positions of logits)"})
@_exits
def validate(c, ports=None, models=None, docker=False, image=None, arch=None):
    """Check every built port against the reference core: logits, greedy and sampled text."""
    return app.validate(ports, models, docker, image, arch)


@task(help={"matrix": "named matrix from orchestrator/bench/matrices.toml: quick, default, paper or full",
            "ports": PORTS_HELP, "skip": "comma-separated ports to leave out (e.g. pytorch,tensorflow: about 5 GB)",
            "models": "comma-separated models (overrides the matrix)",
            "threads": "comma-separated thread counts (overrides the matrix)",
            "runs": "measured runs per cell", "warmup": "warmup runs per cell",
            "steps": "positions per run", "out": "result file (default results/<suite>.json)",
            "resume": "continue the suite in --out, skipping finished cells",
            "install": "first install the missing toolchains of the chosen ports (what ./run bench does)",
            "strict": "exit non-zero when any cell failed or any port was skipped (default: only when none ran)",
            "docker": "run each cell in a container (see the README)",
            "image": "with --docker: the image (default polyllama:<commit>, or $POLYLLAMA_IMAGE)",
            "types": "comma-separated weight types: f32 (default) and/or q8_0 (each model's Q8_0 GGUF export, "
                     "for the ports whose port.toml lists gguf-q8_0; the report shows the q8_0/f32 speed-up)"})
@_exits
def bench(c, matrix="default", ports=None, skip=None, models=None, threads=None, runs=None, warmup=None, steps=None,
          out=None, resume=False, install=False, strict=False, docker=False, image=None, types=None):
    """Benchmark the ports over models x threads; tables, result JSON, exports and figures."""
    from orchestrator.bench.pipeline import Options

    return app.bench(Options(matrix=matrix, ports=ports, skip=skip, models=models, threads=threads, runs=runs,
                             warmup=warmup, steps=steps, out=out, resume=resume, install=install, strict=strict,
                             docker=docker, image=image, types=types))


@task(help={"port": "the port whose command is timed",
            "models": "comma-separated models (synthetic when absent)",
            "threads": "comma-separated -j values; 'all' = every core", "steps": "positions per run",
            "rounds": "paired rounds (hyperfine and ours, alternating which goes first) per cell"})
@_exits
def overhead(c, port="c", models="stories15M,stories110M", threads="1,all", steps=256, rounds=5):
    """Measure the harness's own cost: our executor against `hyperfine -N` on the same commands."""
    return app.overhead(port, models, threads, int(steps), int(rounds))


@task(help={"ports": PORTS_HELP,
            "env": "what turns the lever off, NAME=VALUE[,NAME=VALUE] (e.g. POLYLLAMA_HUGEPAGES=0)",
            "models": "comma-separated models", "threads": "comma-separated thread counts, or all",
            "steps": "positions per run", "rounds": "paired rounds (off/on order alternates)",
            "out": "JSON file for the raw samples",
            "types": "comma-separated weight types: f32 (the v0 file), q8_0 (its Q8_0 GGUF export)"})
@_exits
def lever(c, ports, env, models="stories110M", threads="1,all", steps=128, rounds=3, out=None, types="f32"):
    """What a performance lever buys: each cell run with it off and on, interleaved, as paired ratios."""
    return app.lever(ports, env, models, threads, int(steps), int(rounds), out, types)


@task(help={"results": "a result JSON written by `invoke bench`", "out": "folder for the exports and figures",
            "html": "also write one self-contained page, <out>/<suite>.html, that opens offline in a browser",
            "validation": "a JSON list of `invoke validate` rows to show on the page (implies --html)",
            "docs": "also write the suite's current block (its matrix's) into this markdown page, "
                    "e.g. docs/benchmarks.md; the result file should be committed, since the block names it"})
@_exits
def report(c, results, out=None, html=False, validation=None, docs=None):
    """Regenerate tables, exports and figures (and with --html the page) from a saved result file."""
    return app.report(results, out, html, validation, docs)


@task
@_exits
def golden(c):
    """Write tests/data/golden/ (the texts every port's own tests compare with) from the numpy reference."""
    return app.golden()


@task(help={"a": "baseline result JSON", "b": "result JSON to compare with it",
            "metric": "tok_s (default), wall_s or rss_mib",
            "threshold": "fail (exit 1) when a cell is worse by more than this fraction, beyond the noise (0.05)"})
@_exits
def compare(c, a, b, metric="tok_s", threshold=0.05):
    """What got better or worse between two result files, with 95% intervals; exit 1 on a regression."""
    try:
        threshold = float(threshold)
    except ValueError:
        raise Exit(f"error: --threshold expects a number, got {threshold!r}", code=2)
    return app.compare(a, b, metric, threshold)


@task(help={"ports": PORTS_HELP, "pytest_args": "extra arguments for pytest (quoted)"})
@_exits
def test(c, ports=None, pytest_args=""):
    """The whole suite: build, each port's own unit tests, then pytest (validation, bad input...)."""
    code = app.build(ports)
    code |= app.port_tests(ports)
    code |= app.pytest(pytest_args.split())
    return code


@task(name="list")
@_exits
def models_list(c):
    """List the known models and which files are present (real, synthetic, GGUF)."""
    return app.models_list()


@task(name="fetch", help={"names": "comma-separated models to download (needs internet)"})
@_exits
def models_fetch(c, names):
    """Download models and their tokenizers, sha256-checked."""
    return app.models_fetch(names)


@task(name="synth", help={"names": "comma-separated models to synthesize", "seed": "random seed"})
@_exits
def models_synth(c, names, seed=1234):
    """Write deterministic random-weight models of the exact shape (and size) of known models."""
    return app.models_synth(names, int(seed))


@task(name="convert", help={"src": "input .bin or .gguf", "dst": "output .gguf or .bin",
                            "tokenizer": "tokenizer.bin to embed (to GGUF; not needed from a GGUF) or to write (from GGUF)",
                            "version": "llama2.c format written from GGUF: 0 or 1",
                            "type": "weight type of a GGUF output: f32 (default) or q8_0 (8-bit blocks, as "
                                    "llama.cpp's Q8_0; norms and rows not a multiple of 32 long stay f32)"})
@_exits
def models_convert(c, src, dst, tokenizer=None, version=0, type="f32"):
    """Convert a checkpoint between llama2.c .bin and GGUF (f32, or q8_0 with --type q8_0)."""
    return app.models_convert(src, dst, tokenizer, int(version), type)


models = Collection("models", models_list, models_fetch, models_synth, models_convert)
ns = Collection(install, build_all, validate, bench, lever, report, compare, overhead, golden, test, models)
