"""One conformance suite for the Python-hosted ports (a framework behind the reference's command
line: `{python} ./run.py` with a `backend(model, args)` hook): logits against the reference core
on a tiny model in every format and on stories260K, seeded sampled text, and the command line end
to end. Each port is one parameter; a port whose framework is not installed fails under CI=true."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conformance import assert_close, load_port, tiny_files
from conftest import need

from orchestrator.formats import read_model, read_tokenizer
from orchestrator.ports.discover import discover, toolchain_version
from orchestrator.reference.cli import Args
from orchestrator.reference.generate import generate, logits_for
from orchestrator.reference.model import Transformer as Reference
from orchestrator.reference.sampler import Sampler
from orchestrator.reference.tokenizer import Tokenizer

HOSTED = [p for p in discover() if p.manifest.role == "port" and p.manifest.run.command[0] == "{python}"]
IDS = [1, 203, 211, 9, 18, 299, 2, 5, 77, 100, 200, 250, 1, 17, 298, 42, 3, 260, 261, 0]


@pytest.fixture(scope="module", params=HOSTED, ids=lambda p: p.name)
def hosted(request):
    """(port, make): make(model) is the port's forward pass, one thread, as its CLI builds it."""
    port = request.param
    if toolchain_version(port) is None:
        need(f"{port.name}: its framework is not installed (invoke install --ports {port.name})")
    module = load_port(port.dir / "run.py", f"polyllama_{port.name}_port")
    return port, lambda model: module.backend(model, Args(checkpoint="-", threads=1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def test_the_suite_covers_the_framework_ports():
    assert {"pytorch", "tensorflow"} <= {p.name for p in HOSTED}


@pytest.mark.parametrize("fmt", ["v0", "v1", "gguf"])
@pytest.mark.parametrize("tag", ["shared", "unshared"])
def test_logits_match_reference_on_tiny_model(hosted, tiny, fmt, tag):
    _, make = hosted
    model = read_model(tiny[0][(fmt, tag)])
    assert_close(logits_for(Reference(model), IDS), logits_for(make(model), IDS))


def test_logits_match_reference_on_stories260K(hosted, stories260k):
    _, make = hosted
    model = read_model(stories260k.path)
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 60))
    assert_close(logits_for(Reference(model), ids), logits_for(make(model), ids))


def test_sampled_text_matches_reference_on_stories260K(hosted, stories260k):
    _, make = hosted
    model = read_model(stories260k.path)
    tokenizer = Tokenizer(read_tokenizer(stories260k.tokenizer, model.config.vocab_size))
    ref = generate(Reference(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    got = generate(make(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    assert got.text == ref.text


def _cli(port, *args):
    return subprocess.run([sys.executable, str(port.dir / "run.py"), *map(str, args)], capture_output=True,
                          timeout=300)


def test_cli_greedy_text_and_a_quiet_stderr(hosted, tiny):
    port, _ = hosted
    files, tok = tiny
    model = read_model(files[("v0", "shared")])
    ref = generate(Reference(model), Tokenizer(read_tokenizer(tok, 300)), Sampler(0.0, 0.9, 1), b"ab", 30)
    r = _cli(port, files[("v0", "shared")], "-z", tok, "-t", "0", "-n", "30", "-i", "ab", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.text
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, lines  # the framework's own logging kept off stderr
    assert lines[0].startswith(f'polyllama-stats: {{"port":"{port.name}",') and '"threads":2' in lines[0]


def test_cli_errors_are_one_line_with_the_contract_exit_codes(hosted, tmp_path):
    port, _ = hosted
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\x01" * 10)
    for argv, code in (((bad, "-j", "0"), 2), ((bad, "-x", "1"), 2), ((tmp_path / "missing.bin",), 3), ((bad,), 3)):
        r = _cli(port, *argv)
        assert r.returncode == code, r.stderr
        assert r.stderr.decode().splitlines()[0].startswith("error: ")
        assert r.stdout == b""
