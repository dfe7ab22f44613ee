"""Bad files and bad flags: the Python readers, and every built port through its command line."""
import pytest
from conftest import IN_CI
from corpus import BAD_BATCH_FLAGS, BAD_FLAGS, GOOD_BATCH_FLAGS, GOOD_FLAGS, make_corpus

from orchestrator.process import execute
from orchestrator.errors import FormatError
from orchestrator.formats import read_model, read_tokenizer
from orchestrator.ports.discover import discover, tool_env

PORTS = discover()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _python_load(case):
    model = read_model(case.checkpoint)
    if model.tokenizer is None:
        read_tokenizer(case.tokenizer, model.config.vocab_size)


def test_every_bad_file_is_refused_by_the_python_readers(corpus):
    cases, _, _ = corpus
    for case in cases:
        with pytest.raises(FormatError) as info:
            _python_load(case)
            pytest.fail(f"{case.name}: accepted")
        assert "\n" not in str(info.value), case.name
        assert str(case.checkpoint) in str(info.value) or str(case.tokenizer) in str(info.value), case.name


def test_the_good_files_load(corpus):
    _, good, tok = corpus
    model = read_model(good)
    assert len(read_tokenizer(tok, model.config.vocab_size)) == model.config.vocab_size
    q8 = read_model(good.with_name("good_q8.gguf"))
    assert q8.fmt == "gguf-q8_0" and q8.types() == {"q8_0": 2 * 6 + 2, "f32": 2 * 3 + 1}


def test_the_q8_cases_are_refused_for_their_q8_reason(corpus):
    """Each Q8_0 case breaks only what Q8_0 adds: the reference's message says so."""
    cases, _, _ = corpus
    reasons = {"rows not a multiple of 32": "not a multiple of the block size 32", "norm": "norms are F32",
               "unsupported type Q8_1": "has type 9", "tensor inside another's blocks": "overlap",
               "truncated blocks": "output.weight lies outside the file",
               "last block missing": "output.weight lies outside the file"}
    q8 = [c for c in cases if c.name.startswith("gguf q8_0 ")]
    assert {c.name.removeprefix("gguf q8_0 ") for c in q8} == set(reasons)
    for case in q8:
        with pytest.raises(FormatError, match=reasons[case.name.removeprefix("gguf q8_0 ")]):
            read_model(case.checkpoint)


def _built(port):
    if not port.outputs_present():
        if IN_CI:
            pytest.fail(f"port {port.name} is not built (every port must build in CI)")
        pytest.skip(f"port {port.name} is not built")


def _one_error_line(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_refuses_bad_files(port, corpus):
    _built(port)
    cases, _, _ = corpus
    failures = []
    for case in cases:
        if case.checkpoint.suffix == ".bin" and "gguf" in case.name and not port.reads("gguf"):
            continue
        argv = port.run_argv() + [str(case.checkpoint), "-n", "4", "-t", "0"]
        if case.tokenizer is not None:
            argv += ["-z", str(case.tokenizer)]
        r = execute(argv, cwd=port.dir, env=tool_env(), timeout=60)
        errors = _one_error_line(r.stderr)
        if r.timed_out:
            failures.append(f"{case.name}: hung (killed after 60 s)")
        elif r.returncode != 3 or len(errors) != 1:
            failures.append(f"{case.name}: exit {r.returncode}, {len(errors)} error lines: {r.stderr.strip()[:200]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_refuses_bad_flags(port, corpus):
    _built(port)
    _, good, tok = corpus
    failures = []
    batched = port.manifest.contract >= 2
    for flags in BAD_FLAGS + (BAD_BATCH_FLAGS if batched else []):
        argv = port.run_argv() + [str(good), "-z", str(tok), *flags]
        r = execute(argv, cwd=port.dir, env=tool_env(), timeout=60)
        if r.returncode != 2 or not _one_error_line(r.stderr):
            failures.append(f"{flags}: exit {r.returncode}: {r.stderr.strip()[:200]!r}")
    if port.reads("gguf-q8_0"):  # a Q8_0 file with F32 tensors mixed in must run
        r = execute(port.run_argv() + [str(good.with_name("good_q8.gguf")), "-t", "0", "-n", "4"], cwd=port.dir,
                    env=tool_env(), timeout=60)
        if r.returncode != 0:
            failures.append(f"good Q8_0 GGUF: exit {r.returncode}: {r.stderr.strip()[:200]!r}")
    readable = good if port.reads("v0") else good.with_suffix(".gguf")  # the same weights, for GGUF-only ports
    for flags in GOOD_FLAGS + (GOOD_BATCH_FLAGS if batched else []):
        argv = port.run_argv() + [str(readable), "-z", str(tok), "-t", "0", *flags]
        r = execute(argv, cwd=port.dir, env=tool_env(), timeout=60)
        if r.returncode != 0:
            failures.append(f"{flags} (allowed by the contract): exit {r.returncode}: {r.stderr.strip()[:200]!r}")
    r = execute(port.run_argv(), cwd=port.dir, env=tool_env(), timeout=60)
    if r.returncode != 2:
        failures.append(f"no arguments: exit {r.returncode}")
    assert not failures, "\n".join(failures)
