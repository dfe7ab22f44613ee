import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.formats import Config, Model  # noqa: E402
from orchestrator.models.store import Store  # noqa: E402
from orchestrator.models.synth import random_model, random_vocab  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


def need(reason: str):
    """A missing prerequisite: a failure in CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container_engine():
    """A container engine for the session: Docker when there is one, else podman's API service
    started here (scripts/podman-setup.sh configures it) and stopped when the tests end."""
    from orchestrator.containers.podman import engine
    with engine() as why:
        if why:
            need(f"container tests: {why}")
        yield


@pytest.fixture(scope="session")
def store():
    return Store()


@pytest.fixture(scope="session")
def stories260k(store):
    """The real stories260K and tok512 from the store's search path (POLYLLAMA_MODEL_PATH)."""
    try:
        r = store.resolve("stories260K", allow_synthetic=False)
    except Exception as e:  # not found
        need(f"real stories260K not available: {e}")
    if r.origin != "real" or r.tokenizer_origin != "real":
        need(f"stories260K at {r.path} is {r.origin}, not the published file")
    return r


@pytest.fixture(scope="session")
def llama2_tokenizer(store):
    path, origin = store.find_tokenizer("llama2")
    if path is None or origin != "real":
        need("the real Llama 2 tokenizer.bin is not in POLYLLAMA_MODEL_PATH")
    return path


TINY = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=32)


@pytest.fixture
def tiny_model():
    return random_model(TINY, seed=7)


@pytest.fixture
def tiny_unshared():
    c = Config(**{**TINY.__dict__, "shared_classifier": False})
    return random_model(c, seed=8)


@pytest.fixture
def tiny_vocab():
    return random_vocab(TINY.vocab_size, seed=7)


def assert_same_weights(a: Model, b: Model):
    assert a.config == b.config
    assert set(a.weights) == set(b.weights)
    for name in a.weights:
        x, y = np.asarray(a.weights[name]), np.asarray(b.weights[name])
        assert x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
