"""Differential fuzzing of the model-file readers: Hypothesis mutates the real stories260K files
(v0, v1, GGUF F32 and Q8_0, and tokenizer.bin) and crafted headers, runs the reference and every built port
with its own reader on each, and fails when a port's exit class (0, 1, 2 or 3) differs from the
reference's, or when a port crashes, hangs past the timeout, or exceeds the memory bound.

CI runs a fixed seed and a bounded number of examples; POLYLLAMA_FUZZ_EXAMPLES=2000 runs longer.
Failing examples are kept in tests/data/hypothesis (Hypothesis's example database, committed), so
a case once found is replayed first in every later run.

The Python-hosted ports (PyTorch, TensorFlow) read files with the reference's own readers, so
comparing them with the reference would compare a reader with itself; they are left out here.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conftest import IN_CI
from orchestrator.process import execute
from orchestrator.formats import read_model, write_gguf, write_v1
from orchestrator.formats.tokenizer_file import read_tokenizer
from orchestrator.ports.discover import discover, tool_env

HERE = Path(__file__).resolve().parent
EXAMPLES = int(os.environ.get("POLYLLAMA_FUZZ_EXAMPLES", "40"))
TIMEOUT_S = 30
MEMORY_BOUND_KIB = 2 << 20  # 2 GiB: stories260K needs a few MB; more means a size trusted from a header
CRASH = "crash"


def _readers():
    """Built ports that parse files with their own code."""
    out = []
    for p in discover():
        hosted = p.manifest.role != "peer" and p.manifest.run.command[0] == "{python}"
        if p.manifest.role == "reference" or hosted or not p.outputs_present():
            continue
        out.append(p)
    return out


PORTS = _readers()


@pytest.fixture(scope="module")
def originals(stories260k, tmp_path_factory):
    """The real files in every format the ports read."""
    d = tmp_path_factory.mktemp("fuzz-originals")
    model = read_model(stories260k.path)
    vocab = read_tokenizer(stories260k.tokenizer, model.config.vocab_size)
    write_v1(d / "v1.bin", model)
    write_gguf(d / "m.gguf", model, vocab)
    write_gguf(d / "q8.gguf", model.quantized(), vocab)  # Q8_0 blocks, F32 norms and ffn_down (rows of 172)
    return {"v0": stories260k.path.read_bytes(), "v1": (d / "v1.bin").read_bytes(),
            "gguf": (d / "m.gguf").read_bytes(), "gguf-q8_0": (d / "q8.gguf").read_bytes(),
            "tok": stories260k.tokenizer.read_bytes(),
            "tok_path": stories260k.tokenizer, "v0_path": stories260k.path}


# ---------------------------------------------------------------- mutations
INTERESTING_32 = [0, 1, -1, 2, 7, 31, 32, 33, 255, 256, 4096, 65536, 65537, 2**31 - 1, -2**31, 2**30]
INTERESTING_64 = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - 24, 65536, 65537]


@st.composite
def mutation(draw):
    """(target file, mutated bytes recipe): a recipe is applied to the original bytes."""
    target = draw(st.sampled_from(["v0", "v1", "gguf", "tok", "gguf-q8_0"]))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "int32", "int64", "splice"]))
    # most mutations land in the first 4 KiB: the headers, the kv section and the tensor infos
    where = draw(st.one_of(st.integers(0, 4095), st.integers(0, 2**22)))
    if kind == "flip":
        return target, kind, where, draw(st.integers(1, 255))
    if kind == "truncate":
        return target, kind, where, None
    if kind == "extend":
        return target, kind, where, draw(st.binary(min_size=1, max_size=64))
    if kind == "int32":
        return target, kind, where & ~3, draw(st.sampled_from(INTERESTING_32))
    if kind == "int64":
        return target, kind, where, draw(st.sampled_from(INTERESTING_64))
    return target, kind, where, draw(st.integers(1, 512))  # splice: a copy of a later stretch over here


def apply(data: bytes, kind: str, where: int, arg) -> bytes:
    where = min(where, max(len(data) - 1, 0))
    b = bytearray(data)
    if kind == "flip":
        b[where] ^= arg
    elif kind == "truncate":
        del b[where:]
    elif kind == "extend":
        b[where:where] = arg
    elif kind == "int32" and where + 4 <= len(b):
        b[where:where + 4] = struct.pack("<i", arg)
    elif kind == "int64" and where + 8 <= len(b):
        b[where:where + 8] = struct.pack("<Q", arg)
    elif kind == "splice":
        src = min(where + arg, len(b))
        b[where:where + arg] = b[src:src + arg]
    return bytes(b)


# ---------------------------------------------------------------- running
def exit_class(port, checkpoint: Path, tokenizer: Path) -> str:
    argv = port.run_argv() + [str(checkpoint), "-z", str(tokenizer), "-n", "4", "-t", "0", "-s", "1"]
    r = execute(argv, cwd=port.dir, env=tool_env(), timeout=TIMEOUT_S)
    if r.timed_out:
        return f"hang (> {TIMEOUT_S} s)"
    if r.returncode is None or r.returncode < 0 or r.returncode > 3:
        return f"{CRASH} (exit {r.returncode}: {r.error_line[:120]!r})"
    if r.max_rss_kib > MEMORY_BOUND_KIB:
        return f"memory {r.max_rss_kib >> 10} MiB"
    if r.returncode and len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) != 1:
        return f"exit {r.returncode} without one error line"
    return str(r.returncode)


def reference_class(checkpoint: Path, tokenizer: Path) -> str:
    [ref] = [p for p in discover() if p.manifest.role == "reference"]
    return exit_class(ref, checkpoint, tokenizer)


def _case_files(tmp: Path, originals, target, kind, where, arg) -> tuple[Path, Path]:
    tok = originals["tok_path"]
    if target == "tok":
        tok = tmp / "tok.bin"
        tok.write_bytes(apply(originals["tok"], kind, where, arg))
        return originals["v0_path"], tok
    ckpt = tmp / ("m.gguf" if target.startswith("gguf") else f"{target}.bin")
    ckpt.write_bytes(apply(originals[target], kind, where, arg))
    return ckpt, tok


def test_there_are_ports_to_fuzz():
    if IN_CI:
        assert {"c", "cpp", "rust", "go", "zig", "java"} <= {p.name for p in PORTS}, "compiled ports must be built"
    elif not PORTS:
        pytest.skip("no port with its own reader is built")


@pytest.mark.slow
@seed(20261130)
@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,  # @seed fixes the examples
          database=DirectoryBasedExampleDatabase(str(HERE / "data" / "hypothesis")),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=mutation())
def test_every_port_gives_the_references_verdict(originals, tmp_path_factory, m):
    target, kind, where, arg = m
    tmp = tmp_path_factory.mktemp("case")
    ckpt, tok = _case_files(tmp, originals, target, kind, where, arg)
    expected = reference_class(ckpt, tok)
    assert expected in ("0", "3"), f"the reference itself: {expected}"
    fmt = target if target.startswith("gguf") else "v0"  # a port that reads v0 reads v1 too (the contract)
    verdicts = {p.name: exit_class(p, ckpt, tok) for p in PORTS if p.reads(fmt)}
    wrong = {name: v for name, v in verdicts.items() if v != expected}
    assert not wrong, f"{target} {kind} at {where} ({arg!r}): reference exits {expected}, {wrong}"
