"""invoke lever: paired off/on runs of a cell, as a ratio with its interval."""
import sys

import pytest

from orchestrator.bench.lever import LeverCell, measure_lever, to_json
from orchestrator.errors import PolyllamaError

# a stand-in port: twice as fast unless FAKE_LEVER=0, and it says which it saw
FAKE = ("import os, sys, json; fast = os.environ.get('FAKE_LEVER') != '0'; "
        "print('polyllama-stats: ' + json.dumps({'generated_tokens': 101, 'decode_s': 0.5 if fast else 1.0}), "
        "file=sys.stderr)")


def test_lever_pairs_off_and_on_runs(tmp_path):
    cell = LeverCell("fake", [sys.executable, "-c", FAKE], str(tmp_path))
    [done] = measure_lever([cell], {"FAKE_LEVER": "0"}, rounds=3, log=lambda m: None)
    assert done.off == [100.0] * 3 and done.on == [200.0] * 3
    assert done.ratio().value == pytest.approx(2.0) and done.ratio().n == 3
    assert '"off_env": {\n  "FAKE_LEVER": "0"' in to_json([done], {"FAKE_LEVER": "0"})


def test_lever_on_side_unsets_what_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LEVER", "0")  # set in the caller's environment: "on" must drop it
    cell = LeverCell("fake", [sys.executable, "-c", FAKE], str(tmp_path))
    measure_lever([cell], {"FAKE_LEVER": "0"}, rounds=2, log=lambda m: None)
    assert cell.on == [200.0] * 2


def test_a_failing_cell_is_one_clear_error(tmp_path):
    cell = LeverCell("broken", [sys.executable, "-c", "import sys; print('error: no model', file=sys.stderr); sys.exit(3)"],
                     str(tmp_path))
    with pytest.raises(PolyllamaError, match="no model"):
        measure_lever([cell], {"X": "0"}, rounds=1, log=lambda m: None)


def test_a_q8_0_cell_runs_the_models_q8_0_export(store):
    from orchestrator.bench.measure import CellSpec
    from orchestrator.formats import read_model
    from orchestrator.ports.discover import discover

    port = next(p for p in discover() if p.name == "c")
    resolved = store.resolve("stories260K")
    f32, q8 = (CellSpec.greedy(port, resolved, 1, 8, w) for w in ("f32", "q8_0"))
    assert f32.model.path == str(resolved.path) and "-z" in f32.argv()
    assert q8.model.weight_type == "q8_0" and q8.model.format == "gguf-q8_0"
    assert q8.argv()[len(port.run_argv())] == q8.model.path and "-z" not in q8.argv()  # GGUF embeds its tokenizer
    assert read_model(q8.model.path).tensor_bytes() < read_model(f32.model.path).tensor_bytes()


def test_lever_refuses_an_unknown_weight_type():
    from orchestrator import app
    from orchestrator.errors import UsageError

    with pytest.raises(UsageError, match="--types takes f32, q8_0, f16, bf16, got q4"):
        app.lever("c", "X=0", "stories260K", "1", 8, 1, None, types="q4")
