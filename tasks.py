"""polyllama's entry points. Thin on purpose: the logic lives in `orchestrator/`."""
from __future__ import annotations

import functools
import sys

from invoke import Collection, Exit, task

from orchestrator import app
from orchestrator.errors import PolyllamaError, UsageError

# Every flag's help says what it takes and what it is when not given; the shared ones read the
# same on every task (--ports less --skip picks the ports; --out is the one file a task writes).
PORTS_HELP = "comma-separated port names (default: every port under impls/)"
SKIP_HELP = "comma-separated ports to leave out of --ports (default: none)"
IMAGE_HELP = "with --docker: the image (default: $POLYLLAMA_IMAGE, else polyllama:<commit>)"


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


@task(help={"ports": PORTS_HELP, "skip": SKIP_HELP})
@_exits
def install(c, ports=None, skip=None):
    """Install the missing toolchains of the ports (only those whose check fails), from package registries."""
    return app.install(ports, skip)


@task(help={"ports": PORTS_HELP, "skip": SKIP_HELP, "jobs": "build parallelism passed to each port's build (default: 2)",
            "strict": "fail when a port is skipped for a missing toolchain (default: off)",
            "docker": "build the Dockerfile's image instead, tagged polyllama:<commit> (default: off)",
            "target": "with --docker: the Dockerfile stage, full|slim (slim = reference + C) (default: full)",
            "arch": "native|arm64: arm64 = the ports' [cross.arm64] builds, made with cross toolchains "
                    "(scripts/arm64-setup.sh) (default: native)",
            "platform": "with --docker: linux/arm64 builds the image for arm64 under qemu "
                        "(base image: scripts/podman-setup.sh --arch arm64) (default: the host's)"})
@_exits
# skip comes last so that the short flags the other options had before it came (-a, -s, -t) stay theirs
def build_all(c, ports=None, jobs=2, strict=False, docker=False, target="full", arch=None, platform=None, skip=None):
    """Build every port natively (or the container image); report what was built, skipped and why, or failed."""
    return app.build(ports, int(jobs), strict, docker, target, arch, platform, skip=skip)


@task(help={"ports": PORTS_HELP, "skip": SKIP_HELP,
            "models": "comma-separated models (default: stories260K,stories15M; synthetic when not present)",
            "out": "JSON file to save the rows in, failures included; `invoke report --validation` reads it "
                   "(default: none, the table only)",
            "docker": "run the ports inside the container image; DOCKER_HOST selects the engine (default: off)",
            "image": IMAGE_HELP,
            "arch": "native|arm64: arm64 = the ports' arm64 builds under qemu-aarch64 (stories15M: 8 positions "
                    "of logits) (default: native)"})
@_exits
def validate(c, ports=None, skip=None, models=None, out=None, docker=False, image=None, arch=None):
    """Check every built port against the reference core: logits, greedy and sampled text."""
    return app.validate(ports, models, docker, image, arch, out=out, skip=skip)


@task(help={"matrix": "named matrix from orchestrator/bench/matrices.toml, quick|default|paper|full|prompt|scale "
                      "(default: default; with --resume: the file's)",
            "ports": PORTS_HELP + " (with --resume: the file's)", "skip": SKIP_HELP + "; e.g. pytorch,tensorflow: "
                                                                                    "about 5 GB to install",
            "models": "comma-separated models (default: the matrix's)",
            "threads": "comma-separated thread counts, 'all' = every core, 'sweep' = 1, 2, 4 ... all "
                       "(default: the matrix's)",
            "runs": "measured runs per cell (default: the matrix's)",
            "warmup": "warmup runs per cell (default: the matrix's)",
            "steps": "positions per run of the default tg test (default: the matrix's)",
            "tests": "comma-separated tests, as llama-bench names them: tgN = generate N tokens after BOS, ppN = "
                     "read an N-token prompt through each port's batched prefill (capped at the model's context: "
                     "the 15M shape's pp512 is a pp256); pp cells get the host's compute peaks as their roofline "
                     "(default: the matrix's, tg<steps>)",
            "types": "comma-separated weight types, f32|q8_0; q8_0 = each model's Q8_0 GGUF export, for the ports "
                     "whose port.toml lists gguf-q8_0; the report shows the q8_0/f32 speed-up (default: the "
                     "matrix's, f32)",
            "out": "the result JSON to write; exports and the page go beside it (default: results/<matrix>-<time>.json)",
            "resume": "a result JSON to continue: its matrix, ports, models, threads, runs, warmup, steps, tests and types "
                      "are used, finished cells are kept; a flag that contradicts the file is refused (default: none)",
            "validate": "first validate the chosen ports against the reference core on stories260K and keep the "
                        "rows in the suite; a port that fails is measured all the same (default: on; "
                        "--no-validate skips it)",
            "install": "first install the missing toolchains of the chosen ports, as ./run bench does (default: off)",
            "strict": "exit non-zero when any cell failed or any port was skipped (default: off, only when none ran)",
            "docker": "run each cell in a container, see the README (default: off)",
            "image": IMAGE_HELP})
@_exits
def bench(c, matrix=None, ports=None, skip=None, models=None, threads=None, runs=None, warmup=None, steps=None,
          types=None, out=None, resume=None, validate=True, install=False, strict=False, docker=False, image=None,
          tests=None):
    """Benchmark the ports over models x threads; tables, result JSON, exports and figures."""
    from orchestrator.bench.pipeline import Options

    return app.bench(Options(matrix=matrix, ports=ports, skip=skip, models=models, threads=threads, runs=runs,
                             warmup=warmup, steps=steps, out=out, resume=resume, install=install, strict=strict,
                             docker=docker, image=image, types=types, validate=validate, tests=tests))


@task(help={"port": "the one port whose command is timed (default: c)",
            "models": "comma-separated models, synthetic when absent (default: stories15M,stories110M)",
            "threads": "comma-separated -j values, 'all' = every core (default: 1,all)",
            "steps": "positions per run (default: 256)",
            "rounds": "paired rounds (hyperfine and ours, alternating which goes first) per cell (default: 5)"})
@_exits
def overhead(c, port="c", models="stories15M,stories110M", threads="1,all", steps=256, rounds=5):
    """Measure the harness's own cost: our executor against `hyperfine -N` on the same commands."""
    return app.overhead(port, models, threads, int(steps), int(rounds))


@task(help={"ports": "comma-separated port names (required)", "skip": SKIP_HELP,
            "env": "what turns the lever off, NAME=VALUE[,NAME=VALUE], e.g. POLYLLAMA_HUGEPAGES=0 (required)",
            "models": "comma-separated models (default: stories110M)",
            "threads": "comma-separated thread counts, 'all' = every core (default: 1,all)",
            "steps": "positions per run (default: 128)",
            "rounds": "paired rounds, the off/on order alternating (default: 3)",
            "out": "JSON file to save the raw samples in (default: none, the table only)",
            "types": "comma-separated weight types, f32|q8_0: f32 = the v0 file, q8_0 = its Q8_0 GGUF export "
                     "(default: f32)"})
@_exits
def lever(c, ports, env, models="stories110M", threads="1,all", steps=128, rounds=3, out=None, types="f32",
          skip=None):  # skip last: -s stays --steps
    """What a performance lever buys: each cell run with it off and on, interleaved, as paired ratios."""
    return app.lever(ports, env, models, threads, int(steps), int(rounds), out, types, skip=skip)


@task(help={"results": "a result JSON written by `invoke bench` (required)",
            "exports_dir": "folder for the exports (CSV, per-run JSONL, Markdown, hyperfine JSON), the figures "
                           "and the page (default: the result JSON's folder)",
            "html": "also write one self-contained page, <exports-dir>/<suite>.html, that opens offline in a "
                    "browser (default: off)",
            "validation": "a JSON file of `invoke validate --out` rows to show on the page; implies --html "
                          "(default: none)",
            "docs": "also write the suite's current block (its matrix's) into this markdown page, e.g. "
                    "docs/benchmarks.md; commit the result file, since the block names it (default: none)"})
@_exits
def report(c, results, exports_dir=None, html=False, validation=None, docs=None):
    """Regenerate tables, exports and figures (and with --html the page) from a saved result file."""
    return app.report(results, exports_dir, html, validation, docs)


@task
@_exits
def golden(c):
    """Write tests/data/golden/ (the texts every port's own tests compare with) from the numpy reference."""
    return app.golden()


@task(help={"a": "baseline result JSON (required)", "b": "result JSON to compare with it (required)",
            "metric": "tok_s|wall_s|rss_mib (default: tok_s)",
            "threshold": "fail (exit 1) when a cell is worse by more than this fraction, beyond the noise "
                         "(default: 0.05)"})
@_exits
def compare(c, a, b, metric="tok_s", threshold=0.05):
    """What got better or worse between two result files, with 95% intervals; exit 1 on a regression."""
    try:
        threshold = float(threshold)
    except ValueError:
        raise Exit(f"error: --threshold expects a number, got {threshold!r}", code=2)
    return app.compare(a, b, metric, threshold)


@task(help={"ports": PORTS_HELP + " to build and unit-test", "skip": SKIP_HELP,
            "pytest_args": "extra arguments for pytest, quoted (default: none)"})
@_exits
def test(c, ports=None, skip=None, pytest_args=""):
    """The whole suite: build, each port's own unit tests, then pytest (validation, bad input...)."""
    code = app.build(ports, skip=skip)
    code |= app.port_tests(ports, skip=skip)
    code |= app.pytest(pytest_args.split())
    return code


@task(name="list")
@_exits
def models_list(c):
    """List the known models and which files are present (real, synthetic, GGUF)."""
    return app.models_list()


@task(name="fetch", help={"names": "comma-separated models to download, needs internet (required)"})
@_exits
def models_fetch(c, names):
    """Download models and their tokenizers, sha256-checked."""
    return app.models_fetch(names)


@task(name="synth", help={"names": "comma-separated models to synthesize (required)",
                          "seed": "random seed (default: 1234)",
                          "types": "GGUF-only shapes (tinyllama-1.1B, llama2-7B): comma-separated weight types "
                                   "to write, f16|bf16|q8_0|f32 (default: f16)"})
@_exits
def models_synth(c, names, seed=1234, types=None):
    """Write deterministic random-weight models of the exact shape (and size) of known models."""
    return app.models_synth(names, int(seed), types)


@task(name="convert", help={"src": "input .bin or .gguf (required)", "dst": "output .gguf or .bin (required)",
                            "tokenizer": "tokenizer.bin to embed (to GGUF; not needed from a GGUF) or to write "
                                         "(from GGUF) (default: none)",
                            "version": "llama2.c format written from GGUF, 0|1 (default: 0)",
                            "type": "weight type of a GGUF output, f32|q8_0|f16|bf16: q8_0 = 8-bit blocks as "
                                    "llama.cpp's Q8_0 (rows not a multiple of 32 long stay f32), f16/bf16 = every "
                                    "matrix 16-bit; norms stay f32 (default: f32)"})
@_exits
def models_convert(c, src, dst, tokenizer=None, version=0, type="f32"):
    """Convert a checkpoint between llama2.c .bin and GGUF (f32, q8_0, f16 or bf16 with --type)."""
    return app.models_convert(src, dst, tokenizer, int(version), type)


models = Collection("models", models_list, models_fetch, models_synth, models_convert)
ns = Collection(install, build_all, validate, bench, lever, report, compare, overhead, golden, test, models)
