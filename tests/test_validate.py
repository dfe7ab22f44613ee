"""`invoke validate` itself: it passes for every built port, and it can fail."""
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import IN_CI

from orchestrator.models.store import Store
from orchestrator.ports.discover import ROOT, Port, discover, load_manifest
from orchestrator.ports.validate import LOGIT_POSITIONS, build_cases, check_port, expected_for

LYING_PORT = '''import os, sys
sys.path.insert(0, os.environ["POLYLLAMA_ROOT"])
import numpy as np
from orchestrator.reference import cli
real_logits_for = cli.logits_for
def skewed(transformer, tokens, batch=1):
    out = real_logits_for(transformer, tokens, batch)
    if batch in {batches}:
        out[-1, 0] += {delta}
    return out
cli.logits_for = skewed
sys.exit(cli.main(port="liar"))
'''


def _liar(tmp_path, delta, batches=range(1 << 16), contract=1) -> Port:
    """A port off by `delta` in one logit when its batch is one of `batches`."""
    d = tmp_path / "liar"
    d.mkdir()
    (d / "run.py").write_text(LYING_PORT.format(delta=delta, batches=set(batches)))
    (d / "port.toml").write_text(f'contract = {contract}\nname = "liar"\nlanguage = "Python"\nformats = ["v0"]\n'
                                 '[toolchain]\ncheck = ["true"]\n[run]\ncommand = ["{python}", "./run.py"]\n')
    return Port(load_manifest(d / "port.toml"), d)


@pytest.fixture(scope="module")
def case_260k(stories260k):
    [case] = [c for c in build_cases(Store(), ["stories260K"], ["v0"])]
    return case, expected_for(case)


def test_validation_catches_a_small_logit_error(tmp_path, case_260k):
    case, exp = case_260k
    row = check_port(_liar(tmp_path, 0.05), case, exp)
    assert not row.ok and "logits beyond tolerance" in row.problem


def test_validation_catches_a_logit_error_at_one_batch_size_only(tmp_path, case_260k):
    case, exp = case_260k
    row = check_port(_liar(tmp_path, 0.05, batches=[7], contract=2), case, exp)
    assert not row.ok and "logits beyond tolerance at -b 7 -j 1" in row.problem


def test_validation_accepts_float_noise_within_tolerance(tmp_path, case_260k):
    case, exp = case_260k
    assert check_port(_liar(tmp_path, 1e-6), case, exp).ok


def test_invoke_validate_passes_for_every_built_port(stories260k):
    built = [p.name for p in discover() if p.outputs_present()]
    missing = [p.name for p in discover() if not p.outputs_present()]
    if missing and IN_CI:
        pytest.fail(f"ports not built in CI: {missing}")
    r = subprocess.run([sys.executable, "-m", "invoke", "validate", "--ports", ",".join(built)], cwd=ROOT,
                       capture_output=True, text=True, timeout=3000)
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    passed, failed = map(int, re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M).groups())
    assert failed == 0 and passed >= 3 * len(built), r.stdout[-3000:]  # every port, every case


# ---------------------------------------------------------------- Q8_0
Q8_PORT = '''import os, sys
sys.path.insert(0, os.environ["POLYLLAMA_ROOT"])
import numpy as np
from orchestrator.formats import Q8Tensor
from orchestrator.reference import cli, model
{patch}
sys.exit(cli.main(port="{name}", formats={formats!r}))
'''
# activations left in float32: the weights' quantization only
W8A32 = '''model.matvecs = lambda x, *ws, watch=None: [(w.dequantize() if isinstance(w, Q8Tensor) else w) @ x for w in ws]
model.matmuls = lambda x, *ws, watch=None: [x @ (w.dequantize() if isinstance(w, Q8Tensor) else w).T for w in ws]'''
# the definition with the scales applied and the blocks summed last to first in float64: no more
# than a correct port's freedom (an FMA, another order), as long as no rounding is near a tie
REORDERED = '''def matvec(w, a, scales=None):
    isum = np.einsum("rbi,bi->rb", w.qs, a.qx, dtype=np.int32)
    terms = isum.astype(np.float64) * (w.d.astype(np.float64) * a.dx.astype(np.float64))
    return terms[:, ::-1].sum(axis=1).astype(np.float32)
model.q8_matvec = matvec
model.q8_matmul = lambda w, a: np.stack([matvec(w, type(a)(qx, dx)) for qx, dx in zip(a.qx, a.dx)])'''


def _q8_port(tmp_path, name, patch, formats=("gguf-q8_0",), role="port") -> Port:
    d = tmp_path / name
    d.mkdir()
    (d / "run.py").write_text(Q8_PORT.format(patch=patch, name=name, formats=tuple(formats)))
    (d / "port.toml").write_text(f'contract = 1\nname = "{name}"\nlanguage = "Python"\nrole = "{role}"\n'
                                 f'formats = {list(formats)!r}\n'.replace("'", '"') +
                                 '[toolchain]\ncheck = ["true"]\n[run]\ncommand = ["{python}", "./run.py"]\n')
    return Port(load_manifest(d / "port.toml"), d)


@pytest.fixture(scope="module")
def case_260k_q8(stories260k):
    [case] = build_cases(Store(), ["stories260K"], ["gguf-q8_0"])
    return case, expected_for(case)


def test_q8_case_is_the_q8_file_with_tie_free_positions(case_260k_q8):
    case, exp = case_260k_q8
    assert case.fmt == "gguf-q8_0" and case.checkpoint.name.endswith(".q8_0.gguf")
    assert exp.tight == len(exp.ids) == LOGIT_POSITIONS  # stories260K has tie-free tokens for every position
    assert (exp.tolerances() < 2e-4 * (1 + np.abs(exp.logits).max(axis=1))).all()
    assert exp.greedy and len(exp.steps) > 0 and exp.steps[-1].end == len(exp.greedy) - 1  # the "\n" ends it


def test_q8_validation_accepts_another_summation_order(tmp_path, case_260k_q8):
    case, exp = case_260k_q8
    row = check_port(_q8_port(tmp_path, "reordered", REORDERED), case, exp)
    assert row.ok, row.problem
    assert 0 < row.max_abs_diff < 0.01 * row.tolerance and row.greedy_identical == "yes"  # float32 noise


def test_q8_validation_catches_unquantized_activations(tmp_path, case_260k_q8):
    """Skipping the activation's quantization moves the logits by about 1%: within what one
    rounding near a tie may do, but far outside float32 noise at the tie-free positions."""
    case, exp = case_260k_q8
    row = check_port(_q8_port(tmp_path, "w8a32", W8A32), case, exp)
    assert not row.ok and "logits beyond tolerance" in row.problem


def test_a_peer_without_gguf_q8_0_is_reported_not_judged(tmp_path, stories260k):
    from orchestrator.ports.validate import validate

    peer = _q8_port(tmp_path, "peerish", "", formats=("gguf",), role="peer")
    rows = validate([peer], Store(), ["stories260K"], progress=lambda m: None)
    q8 = [r for r in rows if "q8_0" in r.case]
    assert [r.case for r in rows if r not in q8] == ["stories260K (real) gguf"]
    assert len(q8) == 1 and q8[0].ok and q8[0].report_only
    assert "exited 3" in q8[0].problem and "does not list gguf-q8_0" in q8[0].note
    assert q8[0].as_dict()["result"].startswith("report only")


def test_greedy_text_may_part_only_after_a_near_tie_at_a_close_call():
    from orchestrator.ports.rounding import Step, parting

    steps = [Step(5, False, 3.0, 10.0), Step(9, True, 3.0, 10.0), Step(14, False, 0.5, 10.0), Step(20, False, 0.5, 10.0)]
    ref = b"Once upon a time there"
    assert parting(ref, b"Once upon a tXme", steps, 0.05) == (2, True)  # after the tie, gap 0.5 <= 2 * 0.05 * 10
    assert parting(ref, b"Once upXX", steps, 0.05) == (1, False)  # the tie's own step is decided: gap 3.0
    early = [Step(5, False, 0.1, 10.0)] + steps[1:]
    assert parting(ref, b"OnXX", early, 0.05) == (0, False)  # a close call, but no tie before it
