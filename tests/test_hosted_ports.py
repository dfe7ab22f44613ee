"""One conformance suite for the Python-hosted ports (a framework behind the reference's command
line: `{python} ./run.py` with a `backend(model, args)` hook): logits against the reference core
on a tiny model in every format and on stories260K, seeded sampled text, and the command line end
to end. Each (port, mode) is one parameter: a framework port runs compiled by default and keeps
its other mode behind an environment variable (MODES), so both are checked against the reference.
A port whose framework is not installed fails under CI=true."""
from __future__ import annotations

import os
import subprocess
import sys
import time

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
# port -> (the variable that picks its mode, {mode: value}); the first mode is the default
MODES = {
    "pytorch": ("POLYLLAMA_TORCH_COMPILE", {"compiled": "1", "eager": "0"}),
    "tensorflow": ("POLYLLAMA_TF_XLA", {"xla": "1", "graph": "0"}),
}
CASES = [(p, mode) for p in HOSTED for mode in MODES.get(p.name, ("", {"default": None}))[1]]
_modules = {}


def _env(port, mode) -> dict:
    """The environment that runs `port` in `mode`."""
    env = dict(os.environ)
    if port.name in MODES:
        name, values = MODES[port.name]
        env[name] = values[mode]
    return env


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0].name}-{c[1]}")
def hosted(request):
    """(port, mode, make): make(model) is the port's forward pass in that mode, one thread, as its
    CLI builds it (for 256 steps, the CLI's default)."""
    port, mode = request.param
    if toolchain_version(port) is None:
        need(f"{port.name}: its framework is not installed (invoke install --ports {port.name})")
    if port.name not in _modules:  # once per port: a framework's thread pools are sized once a process
        _modules[port.name] = load_port(port.dir / "run.py", f"polyllama_{port.name}_port")
    module, env = _modules[port.name], _env(port, mode)

    def make(model, **args):
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            return module.backend(model, Args(checkpoint="-", threads=1, **args))
        finally:
            os.environ.clear()
            os.environ.update(saved)

    return port, mode, make


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def test_the_suite_covers_the_framework_ports():
    assert {"pytorch", "tensorflow"} <= {p.name for p in HOSTED}
    assert {(p.name, m) for p, m in CASES} >= {("pytorch", "compiled"), ("pytorch", "eager"),
                                                 ("tensorflow", "xla"), ("tensorflow", "graph")}


@pytest.mark.parametrize("fmt", ["v0", "v1", "gguf"])
@pytest.mark.parametrize("tag", ["shared", "unshared"])
def test_logits_match_reference_on_tiny_model(hosted, tiny, fmt, tag):
    _, _, make = hosted
    model = read_model(tiny[0][(fmt, tag)])
    assert_close(logits_for(Reference(model), IDS), logits_for(make(model), IDS))


def test_logits_match_reference_on_stories260K(hosted, stories260k):
    _, _, make = hosted
    model = read_model(stories260k.path)
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 60))
    assert_close(logits_for(Reference(model), ids), logits_for(make(model), ids))


@pytest.mark.parametrize("batch", [2, 7, len(IDS)])
def test_batched_logits_match_reference_on_tiny_model(hosted, tiny, batch):
    """forward_batch (contract 2): every row of every batch length is the one-position row."""
    _, _, make = hosted
    model = read_model(tiny[0][("v1", "unshared")])  # grouped-query attention, unshared classifier
    t = make(model, batch=batch)
    assert hasattr(t, "forward_batch")
    assert_close(logits_for(Reference(model), IDS), logits_for(t, IDS, batch))


def test_batched_logits_match_reference_on_stories260K(hosted, stories260k):
    _, _, make = hosted
    model = read_model(stories260k.path)
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 60))
    assert_close(logits_for(Reference(model), ids), logits_for(make(model, batch=16), ids, 16))


def test_batched_text_matches_reference_on_stories260K(hosted, stories260k):
    """A prompt in batches, the last row's logits sampled: the reference's text."""
    _, _, make = hosted
    model = read_model(stories260k.path)
    tokenizer = Tokenizer(read_tokenizer(stories260k.tokenizer, model.config.vocab_size))
    prompt = b"Once upon a time, there was a little girl named Lily. She"
    ref = generate(Reference(model), tokenizer, Sampler(0.8, 0.9, 42), prompt, 80)
    got = generate(make(model, batch=5), tokenizer, Sampler(0.8, 0.9, 42), prompt, 80, batch=5)
    assert got.text == ref.text


def test_the_batched_pass_is_built_once_at_load(hosted, tiny):
    """Batches of any length (a run's full ones and its shorter last one) reuse what was compiled
    or traced while loading."""
    port, mode, make = hosted
    model = read_model(tiny[0][("v1", "unshared")])
    if mode == "compiled":
        from torch._dynamo.utils import counters

        t = make(model, batch=7)
        graphs, recompiles = counters["stats"]["unique_graphs"], sum(counters["recompiles"].values())
        logits_for(t, IDS, 7)  # lengths 7, 7, 6
        logits_for(t, IDS[:5], 5)
        assert counters["stats"]["unique_graphs"] == graphs
        assert sum(counters["recompiles"].values()) == recompiles
    elif port.name == "tensorflow":
        t = make(model, batch=7)
        logits_for(t, IDS, 7)
        logits_for(t, IDS[:5], 5)
        assert t.batch_step.experimental_get_tracing_count() == 1


def test_sampled_text_matches_reference_on_stories260K(hosted, stories260k):
    _, _, make = hosted
    model = read_model(stories260k.path)
    tokenizer = Tokenizer(read_tokenizer(stories260k.tokenizer, model.config.vocab_size))
    ref = generate(Reference(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    got = generate(make(model), tokenizer, Sampler(0.8, 0.9, 42), b"Once upon a time", 120)
    assert got.text == ref.text


def test_a_compiled_mode_sizes_its_cache_to_the_run(hosted, tiny):
    """A compiled step has fixed shapes, so its cache holds the rows the run can reach: its steps
    (clamped to seq_len) or its -k ids; the logits agree whatever the size."""
    port, mode, make = hosted
    if mode not in ("compiled", "xla"):
        return  # the eager and graph modes keep a seq_len cache and slice it per position
    model = read_model(tiny[0][("v0", "shared")])
    assert make(model, steps=0).rows == model.config.seq_len
    assert make(model, steps=10_000).rows == model.config.seq_len
    assert make(model, mode="logits", ids=IDS[:5]).rows == 5
    small = make(model, steps=len(IDS))
    assert small.rows == len(IDS)
    assert_close(logits_for(Reference(model), IDS), logits_for(small, IDS))
    with pytest.raises(IndexError):
        small.forward(1, len(IDS))


def test_the_compiled_step_compiles_once_at_load(hosted, tiny):
    """Every position of a run reuses the code compiled while loading: no recompile per position."""
    port, mode, make = hosted
    model = read_model(tiny[0][("v1", "unshared")])
    if mode == "compiled":
        from torch._dynamo.utils import counters

        t = make(model)
        graphs, recompiles = counters["stats"]["unique_graphs"], sum(counters["recompiles"].values())
        assert graphs >= 1  # this process compiled at least the one graph
        logits_for(t, IDS)
        assert counters["stats"]["unique_graphs"] == graphs
        assert sum(counters["recompiles"].values()) == recompiles
    elif mode == "xla":
        # A recompile is not a retrace here (XLA compiles once per distinct constant under one
        # trace), so it is caught by its cost: each took seconds, where a compiled step of this
        # model takes well under a millisecond.
        t = make(model)
        start = time.perf_counter()
        logits_for(t, IDS)
        assert t.step.experimental_get_tracing_count() == 1
        assert time.perf_counter() - start < 10, "XLA compiled again at some position"


def test_a_bad_mode_value_is_a_usage_error(hosted, tiny):
    port, mode, _ = hosted
    if port.name not in MODES:
        return
    files, tok = tiny
    r = subprocess.run([sys.executable, str(port.dir / "run.py"), files[("v0", "shared")], "-z", tok, "-n", "4"],
                       capture_output=True, timeout=300, env={**os.environ, MODES[port.name][0]: "yes"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().splitlines()[0].startswith("error: ") and MODES[port.name][0] in r.stderr.decode()


def test_a_compiler_that_cannot_run_is_one_error_line(hosted, tiny, tmp_path):
    """torch.compile builds C++ while loading: without a working compiler the run ends with one
    `error:` line naming the cause and the switch to the eager mode, exit 1."""
    port, mode, _ = hosted
    if mode != "compiled":
        return  # XLA compiles inside the library; the eager and graph modes compile nothing
    files, tok = tiny
    # an empty Inductor cache, so that nothing already built hides the missing compiler
    env = {**_env(port, mode), "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(port.dir / "run.py"), files[("v0", "shared")], "-z", tok, "-n", "4"],
                       capture_output=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch.compile failed: "), lines
    assert "C++ compiler" in lines[0] and "POLYLLAMA_TORCH_COMPILE=0" in lines[0]


def _cli(port, mode, *args):
    return subprocess.run([sys.executable, str(port.dir / "run.py"), *map(str, args)], capture_output=True,
                          timeout=300, env=_env(port, mode))


def test_cli_greedy_text_and_a_quiet_stderr(hosted, tiny):
    port, mode, _ = hosted
    files, tok = tiny
    model = read_model(files[("v0", "shared")])
    ref = generate(Reference(model), Tokenizer(read_tokenizer(tok, 300)), Sampler(0.0, 0.9, 1), b"ab", 30)
    r = _cli(port, mode, files[("v0", "shared")], "-z", tok, "-t", "0", "-n", "30", "-i", "ab", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.text
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, lines  # the framework's own logging kept off stderr
    assert lines[0].startswith(f'polyllama-stats: {{"port":"{port.name}",') and '"threads":2' in lines[0]


def test_cli_errors_are_one_line_with_the_contract_exit_codes(hosted, tmp_path):
    port, mode, _ = hosted
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\x01" * 10)
    for argv, code in (((bad, "-j", "0"), 2), ((bad, "-x", "1"), 2), ((tmp_path / "missing.bin",), 3), ((bad,), 3)):
        r = _cli(port, mode, *argv)
        assert r.returncode == code, r.stderr
        assert r.stderr.decode().splitlines()[0].startswith("error: ")
        assert r.stdout == b""
