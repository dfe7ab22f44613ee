"""The TensorFlow port against the reference core: logits on a tiny synthetic model built here (v0,
v1 and GGUF, shared and unshared classifier, grouped-query attention) and on stories260K, plus
the command line end to end.

Run from this folder: python -m pytest -q test_port.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.formats import read_model, read_tokenizer  # noqa: E402
from orchestrator.reference.generate import generate, logits_for  # noqa: E402
from orchestrator.reference.model import Transformer as Reference  # noqa: E402
from orchestrator.reference.sampler import Sampler  # noqa: E402
from orchestrator.reference.tokenizer import Tokenizer  # noqa: E402
from orchestrator.conformance import assert_close, load_port, stories260k_dir, tiny_files  # noqa: E402

IDS = [1, 203, 211, 9, 18, 299, 2, 5, 77, 100, 200, 250, 1, 17, 298, 42, 3, 260, 261, 0]


port = load_port(HERE / "run.py", "polyllama_tensorflow_port")
tf = port.init_tensorflow(1)


def port_logits(model, ids):
    return logits_for(port.Transformer(model, tf), ids)






@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))

@pytest.mark.parametrize("fmt", ["v0", "v1", "gguf"])
@pytest.mark.parametrize("tag", ["shared", "unshared"])
def test_logits_match_reference_on_tiny_model(tiny, fmt, tag):
    files, _ = tiny
    model = read_model(files[(fmt, tag)])
    ref = logits_for(Reference(model), IDS)
    assert_close(ref, port_logits(model, IDS))


def test_logits_match_reference_on_stories260K():
    d = stories260k_dir()
    model = read_model(d / "stories260K.bin")
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 60))
    assert_close(logits_for(Reference(model), ids), port_logits(model, ids))


def test_sampled_text_matches_reference_on_stories260K():
    d = stories260k_dir()
    model = read_model(d / "stories260K.bin")
    tokenizer = Tokenizer(read_tokenizer(d / "tok512.bin", model.config.vocab_size))
    ref = generate(Reference(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    got = generate(port.Transformer(model, tf), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    assert got.text == ref.text


def run_cli(*args):
    return subprocess.run([sys.executable, str(HERE / "run.py"), *map(str, args)], capture_output=True, timeout=300)


def test_cli_greedy_text_and_stats_line(tiny):
    files, tok = tiny
    model = read_model(files[("v0", "shared")])
    ref = generate(Reference(model), Tokenizer(read_tokenizer(tok, 300)), Sampler(0.0, 0.9, 1), b"ab", 30)
    r = run_cli(files[("v0", "shared")], "-z", tok, "-t", "0", "-n", "30", "-i", "ab", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.text
    last = r.stderr.decode().rstrip("\n").splitlines()[-1]
    assert len([ln for ln in r.stderr.decode().splitlines() if ln.strip()]) == 1, r.stderr  # TF kept quiet
    assert last.startswith('polyllama-stats: {"port":"tensorflow",') and '"threads":2' in last


def test_cli_errors_are_one_line_with_the_contract_exit_codes(tmp_path):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\x01" * 10)
    for argv, code in (((bad, "-j", "0"), 2), ((bad, "-x", "1"), 2), ((tmp_path / "missing.bin",), 3), ((bad,), 3)):
        r = run_cli(*argv)
        assert r.returncode == code, r.stderr
        assert r.stderr.decode().splitlines()[0].startswith("error: ")
        assert r.stdout == b""
