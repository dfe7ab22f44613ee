import os

import pytest
from conftest import need

from orchestrator.formats import read_model
from orchestrator.formats.checkpoint import V0_HEADER_BYTES
from orchestrator.models import store as store_mod
from orchestrator.models.synth import random_model, synthesize_model, synthesize_tokenizer


def test_manifest_sizes_follow_from_the_configs(store):
    # a v0 file = header + weights + the two legacy RoPE tables (shared classifier)
    for name, entry in store.models.items():
        if entry.gguf:  # no published file: its synthetic GGUFs are checked below
            continue
        c = entry.config
        tables = 2 * c.seq_len * c.head_size // 2
        assert entry.bytes == V0_HEADER_BYTES + 4 * (c.weight_count() + tables), name


def test_synthetic_model_has_the_real_size_and_is_labelled(tmp_path, store, monkeypatch):
    monkeypatch.setenv(store_mod.PATH_VAR, str(tmp_path))
    path = synthesize_model(store, "stories15M", out_dir=tmp_path)
    assert path.stat().st_size == store.entry("stories15M").bytes
    assert ".synthetic" in path.name
    synthesize_tokenizer(store, "llama2", out_dir=tmp_path)
    r = store.resolve("stories15M")
    assert r.origin == "synthetic" and r.path == path and r.tokenizer_origin == "synthetic"
    assert read_model(path).config == store.entry("stories15M").config


def test_synthesis_is_deterministic(store):
    c = store.entry("stories260K").config
    a, b = random_model(c, 5), random_model(c, 5)
    assert all((a.weights[k] == b.weights[k]).all() for k in a.weights)
    assert not (random_model(c, 6).weights["wq"] == a.weights["wq"]).all()


def test_real_file_is_recognised_by_checksum(store, tmp_path, monkeypatch):
    path, origin = store.find_model("stories260K", allow_synthetic=False)
    if path is None:
        need("stories260K.bin is not on POLYLLAMA_MODEL_PATH")
    assert origin == "real"
    # the same name with one byte changed is not the published file
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    (tmp_path / "stories260K.bin").write_bytes(bytes(data))
    monkeypatch.setenv(store_mod.PATH_VAR, str(tmp_path))
    assert store.find_model("stories260K", allow_synthetic=False) == (tmp_path / "stories260K.bin", "unverified")


def test_search_path_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(store_mod.PATH_VAR, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert store_mod.search_path()[:2] == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert store_mod.search_path()[-1] == store_mod.MODELS_DIR


def test_a_file_with_the_right_name_but_wrong_bytes_is_not_real(tmp_path, store, monkeypatch):
    monkeypatch.setenv(store_mod.PATH_VAR, str(tmp_path))
    (tmp_path / "stories260K.bin").write_bytes(b"\0" * 100)
    (tmp_path / "tok512.bin").write_bytes(b"\0" * 100)
    assert store.resolve("stories260K").origin == "unverified"


def test_unknown_model_is_a_usage_error(store):
    from orchestrator.errors import UsageError
    with pytest.raises(UsageError):
        store.resolve("stories7B")


def test_fetch_offline_is_one_clear_error(tmp_path, store, monkeypatch):
    from orchestrator.errors import PolyllamaError
    from orchestrator.models.fetch import download
    from orchestrator.models.store import Entry

    monkeypatch.setenv(store_mod.PATH_VAR, str(tmp_path))
    entry = Entry("x", "x.bin", 10, "0" * 64, "http://127.0.0.1:9/x.bin")
    with pytest.raises(PolyllamaError, match="cannot download"):
        download(entry, out_dir=tmp_path, timeout=2)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_gguf_only_shape_is_written_per_type_with_its_size(tmp_path, store, monkeypatch):
    """A GGUF-only shape, written a tensor at a time, reads back with the manifest's shape, its
    keys, an untied output and every matrix in the type asked for; its tensors take what the
    configuration says they take in that type."""
    from orchestrator.formats import read_model
    from orchestrator.formats.config import Config
    from orchestrator.models.synth import synthesize_gguf
    monkeypatch.setenv(store_mod.PATH_VAR, str(tmp_path))
    small = Config(64, 96, 2, 8, 2, 32000, 64, shared_classifier=False, rope_theta=500000.0)
    entry = store.models["tinyllama-1.1B"]
    monkeypatch.setitem(store.models, "tinyllama-1.1B", type(entry)(**{**entry.__dict__, "config": small}))
    for t in ("f16", "bf16", "q8_0"):
        path = synthesize_gguf(store, "tinyllama-1.1B", t, out_dir=tmp_path)
        assert path.name == f"tinyllama-1.1B.synthetic.{t}.gguf"
        m = read_model(path)
        assert m.config == small and m.weight_type == t
        assert m.tensor_bytes() == small.weight_bytes(t)
        assert store.find_typed("tinyllama-1.1B", t) == path
