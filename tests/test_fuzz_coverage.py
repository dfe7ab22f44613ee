"""Coverage-guided fuzzing of the C and C++ ports' model-file readers (libFuzzer, ASan, UBSan).

Each port has three harnesses in its fuzz/ folder (checkpoint: v0 and v1, gguf, tokenizer),
built with clang into its build/fuzz/ (C: `make fuzz-build`; C++: the CMake project fuzz/). Every
harness runs POLYLLAMA_LIBFUZZER_SECONDS (20 by default) through scripts/fuzz/run.sh, its
corpus in build/fuzz/corpus/ seeded from tests/data/fuzz-seeds/; the test fails on any crash, leak,
sanitizer report or harness finding (libFuzzer's exit status and output; the input is kept in
build/fuzz/artifacts/). clang and libFuzzer come from scripts/test-deps.sh: without them the
test fails under CI=true and is skipped elsewhere.

The inputs once found are kept in impls/c/fuzz/regressions/ and impls/cpp/fuzz/regressions/
(named after their harness: checkpoint-*, gguf-*, tokenizer-*), and every one is run through
both ports' built programs: exit 0 or 3, at most one `error:` line, never a crash or a hang.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

from orchestrator.formats import Config, write_v0
from orchestrator.models.synth import random_model

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"c": ROOT / "impls" / "c", "cpp": ROOT / "impls" / "cpp"}
HARNESSES = ("checkpoint", "gguf", "tokenizer")
SECONDS = int(os.environ.get("POLYLLAMA_LIBFUZZER_SECONDS", "20"))
# what libFuzzer and the sanitizers print when they find something, and the harnesses' own findings
FINDINGS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "ERROR: libFuzzer",
            "deadly signal", "SUMMARY: ", "\nfuzz: ")


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _build_commands(port: str) -> list[list[str]]:
    if port == "c":
        return [["make", "fuzz-build"]]
    return [["cmake", "-S", "fuzz", "-B", "build/fuzz", "-G", "Ninja", "-DCMAKE_CXX_COMPILER=clang++"],
            ["cmake", "--build", "build/fuzz"]]


@pytest.fixture(scope="module")
def fuzz_build():
    """Builds the harnesses of a port once per test module; returns the port's folder."""
    built: dict[str, Path] = {}

    def build(port: str) -> Path:
        if port in built:
            return built[port]
        if not sys.platform.startswith("linux"):
            pytest.skip("the fuzz harnesses are Linux only (memfd, /proc/self/fd)")
        tools = ["clang", "objcopy", "make"] if port == "c" else ["clang++", "cmake", "ninja"]
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            need(f"fuzzing the {port} port needs {', '.join(missing)} (scripts/test-deps.sh installs clang)")
        for argv in _build_commands(port):
            r = subprocess.run(argv, cwd=PORTS[port], capture_output=True, text=True, timeout=900)
            out = r.stdout + r.stderr
            if r.returncode != 0 and "libclang_rt.fuzzer" in out:
                need(f"no libFuzzer runtime for clang (Debian: libclang-rt-14-dev): {_tail(out, 500)}")
            assert r.returncode == 0, f"{' '.join(argv)} failed in {PORTS[port]}:\n{_tail(out)}"
        built[port] = PORTS[port]
        return built[port]

    return build


@pytest.mark.parametrize("harness", HARNESSES)
@pytest.mark.parametrize("port", list(PORTS))
def test_libfuzzer_finds_nothing(port, harness, fuzz_build):
    folder = fuzz_build(port)
    env = dict(os.environ, POLYLLAMA_PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "fuzz" / "run.sh"), str(folder), str(SECONDS), harness], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=SECONDS + 600)
    out = r.stdout + r.stderr
    found = [f.strip() for f in FINDINGS if f in out]
    assert r.returncode == 0 and not found, (
        f"{port} fuzz_{harness}: exit {r.returncode}, {found}; the input is in "
        f"{folder / 'build' / 'fuzz' / 'artifacts'}:\n{_tail(out)}")
    assert "Done " in out, f"{port} fuzz_{harness} did not run:\n{_tail(out)}"


# ---------------------------------------------------------------- regressions, through the programs

def _regressions() -> list[Path]:
    files = []
    for port_dir in PORTS.values():
        folder = port_dir / "fuzz" / "regressions"
        files += sorted(p for p in folder.glob("*") if p.is_file() and p.name != "README.md")
    return files


def _program(port: str) -> Path:
    binary = PORTS[port] / "build" / "run"
    if not binary.exists():
        need(f"port {port} is not built ({binary} is missing)")
    return binary


def _count_tokens(data: bytes) -> int:
    """The tokenizer.bin records that parse, as the tokenizer harnesses count them."""
    off, n = 4, 0
    while len(data) - off >= 8:
        (length,) = struct.unpack_from("<i", data, off + 4)
        if length < 0 or length > len(data) - off - 8:
            break
        off, n = off + 8 + length, n + 1
    return n


def _model_with_vocab(tmp: Path, vocab_size: int) -> Path:
    """The smallest valid v0 checkpoint of that vocabulary size."""
    path = tmp / f"vocab{vocab_size}.bin"
    if not path.exists():
        config = Config(dim=2, hidden_dim=1, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=vocab_size, seq_len=2)
        write_v0(path, random_model(config, 1))
    return path


def _runs(case: Path, tmp: Path) -> list[list[str]]:
    """The command lines that load a regression input with the reader its harness fuzzed."""
    kind = case.name.split("-", 1)[0]
    if kind == "tokenizer":
        n = _count_tokens(case.read_bytes())
        return [[str(_model_with_vocab(tmp, k)), "-z", str(case)] for k in (n - 1, n, n + 1) if 1 <= k <= 1 << 20]
    assert kind in ("checkpoint", "gguf"), f"{case}: name it checkpoint-*, gguf-* or tokenizer-*"
    # a tokenizer for the llama2.c formats (GGUF brings its own): any will do, a wrong size is exit 3
    tokenizer = ROOT / "tests" / "data" / "fuzz-seeds" / "tokenizer" / "tok260.bin"
    return [[str(case), "-z", str(tokenizer)]]


def _check(binary: Path, args: list[str], allowed=(0, 3)) -> str | None:
    try:
        r = subprocess.run([str(binary), *args, "-n", "2", "-t", "0"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"{args}: hung (killed after 60 s)"
    stderr = r.stderr.decode("utf-8", "replace")
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    if r.returncode not in allowed or len(errors) > 1 or (r.returncode == 3 and len(errors) != 1):
        return f"{args}: exit {r.returncode}, {len(errors)} error lines: {stderr.strip()[:300]!r}"
    return None


@pytest.mark.parametrize("port", list(PORTS))
def test_regressions_exit_cleanly(port, tmp_path):
    binary = _program(port)
    failures = []
    # the seeds first: valid files, so these must load (exit 0), which shows the runs below can pass
    seeds = ROOT / "tests" / "data" / "fuzz-seeds"
    for gguf in sorted((seeds / "gguf").glob("*.gguf")):
        failures.append(_check(binary, [str(gguf)], allowed=(0,)))
    tok = seeds / "tokenizer" / "tok260.bin"
    failures.append(_check(binary, [str(_model_with_vocab(tmp_path, 260)), "-z", str(tok)], allowed=(0,)))
    for case in _regressions():
        for args in _runs(case, tmp_path):
            failures.append(_check(binary, args))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)
