"""`invoke validate` itself: it passes for every built port, and it can fail."""
import re
import subprocess
import sys

import pytest
from conftest import IN_CI

from orchestrator.models.store import Store
from orchestrator.ports.discover import ROOT, Port, discover, load_manifest
from orchestrator.ports.validate import build_cases, check_port, expected_for

LYING_PORT = '''import os, sys
sys.path.insert(0, os.environ["POLYLLAMA_ROOT"])
import numpy as np
from orchestrator.reference import cli
real_logits_for = cli.logits_for
def skewed(transformer, tokens):
    out = real_logits_for(transformer, tokens)
    out[-1, 0] += {delta}
    return out
cli.logits_for = skewed
sys.exit(cli.main(port="liar"))
'''


def _liar(tmp_path, delta) -> Port:
    d = tmp_path / "liar"
    d.mkdir()
    (d / "run.py").write_text(LYING_PORT.format(delta=delta))
    (d / "port.toml").write_text('contract = 1\nname = "liar"\nlanguage = "Python"\nformats = ["v0"]\n'
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
