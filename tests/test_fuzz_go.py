"""Go's native coverage-guided fuzzing of the Go port's readers (impls/go/fuzz_test.go), each
target for a bounded time: 15 s in CI, POLYLLAMA_GO_FUZZ_SECONDS to run longer. An input that
fails is written by Go into impls/go/testdata/fuzz/<Target>/, which `go test` then replays on
every run (commit it)."""
import os
import re
import subprocess

import pytest

from conftest import need
from orchestrator.ports.discover import select, tool_env, toolchain_version

SECONDS = int(os.environ.get("POLYLLAMA_GO_FUZZ_SECONDS", "15"))
[GO] = select("go")
TARGETS = re.findall(r"^func (Fuzz\w+)\(", (GO.dir / "fuzz_test.go").read_text(), re.M)


def test_every_reader_has_a_target():
    assert TARGETS == ["FuzzParseGGUF", "FuzzReadCheckpoint", "FuzzReadVocab"]


@pytest.mark.parametrize("target", TARGETS)
def test_go_fuzz_target_finds_nothing(target):
    if toolchain_version(GO) is None:
        need("no Go toolchain (invoke install --ports go)")
    r = subprocess.run(["go", "test", "-run", "^$", "-fuzz", f"^{target}$", "-fuzztime", f"{SECONDS}s", "."],
                       cwd=GO.dir, env=tool_env(), capture_output=True, text=True, timeout=SECONDS + 300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
