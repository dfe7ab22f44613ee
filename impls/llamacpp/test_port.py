"""The llama.cpp peer against the reference core: logits of the project's GGUF export, both the
batched logits-mode path and the one-token decode path, on a tiny synthetic model built here
(shared and unshared classifier, grouped-query attention) and on stories260K, plus the command
line end to end. A failure here points at orchestrator/formats/gguf_file.py or the reference.

Run from this folder: python -m pytest -q test_port.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.formats import read_model, read_tokenizer, write_gguf  # noqa: E402
from orchestrator.reference.generate import generate, logits_for  # noqa: E402
from orchestrator.reference.model import Transformer as Reference  # noqa: E402
from orchestrator.reference.sampler import Sampler  # noqa: E402
from orchestrator.reference.tokenizer import Tokenizer  # noqa: E402
from orchestrator.conformance import assert_close, load_port, stories260k_dir, tiny_files  # noqa: E402

IDS = [1, 203, 211, 9, 18, 299, 2, 5, 77, 100, 200, 250, 1, 17, 298, 42, 3, 260, 261, 0]


port = load_port(HERE / "run.py", "polyllama_llamacpp_port")
ll = port.init_llama()


def engine_logits(model, ids, batched: bool) -> np.ndarray:
    engine = port.LlamaCpp(ll, model, 1, len(ids) if batched else 1)
    try:
        if batched:
            return engine.logits_all(ids)
        return logits_for(engine, ids)
    finally:
        engine.close()






@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))

@pytest.mark.parametrize("batched", [True, False], ids=["logits_all", "decode"])
@pytest.mark.parametrize("tag", ["shared", "unshared"])
def test_logits_match_reference_on_tiny_model(tiny, tag, batched):
    files, _ = tiny
    model = read_model(files[("gguf", tag)])
    assert_close(logits_for(Reference(model), IDS), engine_logits(model, IDS, batched))


@pytest.fixture(scope="module")
def stories260K_gguf(tmp_path_factory):
    d = stories260k_dir()
    model = read_model(d / "stories260K.bin")
    path = tmp_path_factory.mktemp("s260") / "stories260K.gguf"
    write_gguf(path, model, read_tokenizer(d / "tok512.bin", model.config.vocab_size))
    return path


@pytest.mark.parametrize("batched", [True, False], ids=["logits_all", "decode"])
def test_logits_match_reference_on_stories260K(stories260K_gguf, batched):
    model = read_model(stories260K_gguf)
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 200))
    assert_close(logits_for(Reference(model), ids), engine_logits(model, ids, batched))


def test_sampled_text_matches_reference_on_stories260K(stories260K_gguf):
    model = read_model(stories260K_gguf)
    tokenizer = Tokenizer(model.tokenizer)
    ref = generate(Reference(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    engine = port.LlamaCpp(ll, model, 1, 1)
    try:
        got = generate(engine, tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    finally:
        engine.close()
    assert got.text == ref.text


def run_cli(*args):
    return subprocess.run([sys.executable, str(HERE / "run.py"), *map(str, args)], capture_output=True, timeout=300)


def test_cli_greedy_text_and_stats_line(tiny):
    files, _ = tiny
    model = read_model(files[("gguf", "shared")])
    ref = generate(Reference(model), Tokenizer(model.tokenizer), Sampler(0.0, 0.9, 1), b"ab", 30)
    r = run_cli(files[("gguf", "shared")], "-t", "0", "-n", "30", "-i", "ab", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.text
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr  # llama.cpp's log kept quiet
    assert lines[0].startswith('polyllama-stats: {"port":"llamacpp",') and '"threads":2' in lines[0]


def test_cli_errors_are_one_line_with_the_contract_exit_codes(tiny, tmp_path):
    files, tok = tiny
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + b"\x01" * 10)
    cases = (((bad, "-j", "0"), 2), ((bad, "-x", "1"), 2), ((tmp_path / "missing.gguf",), 3), ((bad,), 3),
             ((files[("v0", "shared")], "-z", tok), 3))  # a valid llama2.c file: this peer reads GGUF only
    for argv, code in cases:
        r = run_cli(*argv)
        assert r.returncode == code, r.stderr
        assert r.stderr.decode().splitlines()[0].startswith("error: ")
        assert r.stdout == b""
