"""Helpers for the conformance suite of the Python-hosted ports (test_hosted_ports.py): the
contract's logits tolerance, a tiny model in every format, and loading a port's run.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.formats import Config, write_gguf, write_tokenizer, write_v0, write_v1
from orchestrator.models.synth import random_model, random_vocab
from orchestrator.ports.validate import RTOL


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    """The contract's rule: per position max|port - ref| <= RTOL * (1 + max|ref|), same argmax."""
    assert got.shape == ref.shape
    diff = np.abs(got - ref).max(axis=1)
    tol = RTOL * (1 + np.abs(ref).max(axis=1))
    assert (diff <= tol).all(), f"max diff {diff.max():.3g} over tolerance at positions {np.flatnonzero(diff > tol)}"
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def tiny_files(d: Path) -> tuple[dict, Path]:
    """A tiny model in every format, shared and unshared classifier (dim 64, 8 heads over 2 KV
    heads, 300 tokens, seq 48): ({(fmt, "shared"|"unshared"): path}, tokenizer path)."""
    vocab = random_vocab(300)
    files = {}
    for shared in (True, False):
        model = random_model(Config(64, 172, 2, 8, 2, 300, 48, shared_classifier=shared), seed=7 if shared else 8)
        tag = "shared" if shared else "unshared"
        for fmt, write in (("v0", write_v0), ("v1", write_v1)):
            files[(fmt, tag)] = d / f"tiny.{tag}.{fmt}.bin"
            write(files[(fmt, tag)], model)
        files[("gguf", tag)] = d / f"tiny.{tag}.gguf"
        write_gguf(files[("gguf", tag)], model, vocab)
    tok = d / "tok300.bin"
    write_tokenizer(tok, vocab)
    return files, tok


def load_port(run_py: Path, name: str):
    """A port's run.py as a module, without running its command line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, run_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
