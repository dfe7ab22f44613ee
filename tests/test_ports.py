import subprocess
import sys

import pytest

from orchestrator.errors import PolyllamaError, UsageError
from orchestrator.ports.discover import ROOT, discover, load_manifest, select

MANIFEST = """contract = 1
name = "{name}"
language = "Fake"
formats = ["v0"]
[toolchain]
check = ["true"]
[run]
command = ["./run.sh"]
"""


def test_discovery_finds_the_python_reference():
    ports = {p.name: p for p in discover()}
    assert ports["python"].manifest.role == "reference"


def test_every_port_has_what_its_manifest_points_to():
    """A README, the installer script its manifest runs, and build outputs that git ignores."""
    problems = []
    for port in discover():
        if not (port.dir / "README.md").is_file() and port.manifest.role != "reference":
            problems.append(f"{port.name}: no README.md")
        install = port.manifest.toolchain.install or []
        scripts = [a for a in install if a.endswith(".sh")]
        problems += [f"{port.name}: installer {s} missing" for s in scripts if not (port.dir / s).is_file()]
        for out in port.manifest.build.outputs:
            r = subprocess.run(["git", "check-ignore", "-q", str(port.dir / out)], cwd=ROOT)
            if r.returncode != 0:
                problems.append(f"{port.name}: build output {out} is not git-ignored")
    assert not problems, problems


def test_every_port_follows_contract_3():
    """The batched prefill (contract 2) and GGUF files as llama.cpp writes them (contract 3: the
    file's keys, F16 and BF16, a KV cache sized for the run) are in every port and the peer, and
    every port that reads GGUF reads the 16-bit types: tests/test_gguf3.py runs them all."""
    assert {p.name: p.manifest.contract for p in discover()} == {p.name: 3 for p in discover()}
    assert [p.name for p in discover() if p.reads("gguf") and not (p.reads("gguf-f16") and p.reads("gguf-bf16"))] == []


def test_a_new_port_is_discovered_from_its_folder_alone(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "port.toml").write_text(MANIFEST.format(name="fake"))
    [port] = discover(tmp_path)
    assert port.run_argv() == [str(tmp_path / "fake" / "run.sh")]


@pytest.mark.parametrize("text,problem", [
    (MANIFEST.format(name="other"), "must equal its folder"),
    (MANIFEST.format(name="fake").replace('formats = ["v0"]', 'formats = ["v9"]'), "formats"),
    (MANIFEST.format(name="fake").replace("contract = 1", "contract = 7"), "contract"),
    ("name = ", "not valid TOML"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, text, problem):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "port.toml").write_text(text)
    with pytest.raises(PolyllamaError, match=problem):
        load_manifest(tmp_path / "fake" / "port.toml")


def test_selecting_an_unknown_port_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown port"):
        select("python,cobol")


def test_invoke_reports_errors_in_one_line():
    r = subprocess.run([sys.executable, "-m", "invoke", "validate", "--ports", "cobol"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown port" in r.stderr


def test_pinned_toolchains_are_what_the_check_finds():
    """One pin per port (port.toml), used by its check and its installer, so native builds and
    every Dockerfile stage (which run the same installers) build with the same version."""
    from orchestrator.ports.discover import toolchain_version
    problems = []
    for port in discover():
        tc = port.manifest.toolchain
        if not tc.pin:
            continue
        if not any("{pin}" in a for a in tc.check) or not any("{pin}" in a for a in tc.install or []):
            problems.append(f"{port.name}: the pin {tc.pin} is not passed to its check and its installer")
        version = toolchain_version(port)
        if version is not None and tc.pin not in version:
            problems.append(f"{port.name}: the check found {version!r}, the pin is {tc.pin}")
    assert not problems, problems


def test_a_build_records_the_toolchain_it_used(tmp_path):
    """The full image carries outputs without compilers: the version it reports is the recorded one."""
    from orchestrator.ports.build import build_port
    from orchestrator.ports.discover import BUILT_WITH, built_with
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "port.toml").write_text(MANIFEST.format(name="fake").replace(
        'check = ["true"]', 'check = ["echo", "fakecc 9.9"]') + '[build]\ncommands = [["touch", "run.sh"]]\noutputs = ["run.sh"]\n')
    [port] = discover(tmp_path)
    assert built_with(port) is None
    assert build_port(port).status == "built"
    assert (tmp_path / "fake" / BUILT_WITH).read_text() == "fakecc 9.9\n"
    assert built_with(port) == "fakecc 9.9"
