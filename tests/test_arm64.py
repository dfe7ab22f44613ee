"""The ports' linux/arm64 builds (port.toml [cross.arm64]), made here with cross toolchains and run
under qemu-aarch64 against the native reference core: stories260K in every format (logits, greedy
and seeded text, byte-identical), and the stories15M shape's logits over 8 positions for C, Rust
and Zig. What they need comes from `bash scripts/arm64-setup.sh`; without it the tests skip, or fail
under CI=true. About 3 minutes on 2 cores once the toolchains are there (the first Rust and Zig
builds take a minute more each); the README's "arm64 under emulation" says more."""
import shutil
import subprocess
import sys

import pytest
from conftest import need
from test_ports import MANIFEST

from orchestrator.errors import PolyllamaError
from orchestrator.models.store import Store
from orchestrator.ports.build import build_all, build_port, elf_machine, foreign_outputs
from orchestrator.ports.discover import ROOT, discover, load_manifest, select
from orchestrator.ports.validate import EMULATED_POSITIONS, validate

ARCH = "arm64"
CROSSED = [p.name for p in discover() if ARCH in p.manifest.cross]
WITH_15M = {"c", "rust", "zig"}

FAKE = MANIFEST.format(name="fake")
FAKE_CROSS = """
[cross.arm64]
check = ["true"]
commands = [["true"]]
outputs = ["run.sh"]
run = ["qemu-aarch64-static", "./run.sh"]
"""


# ----------------------------------------------------------------------------
# The manifests and the orchestrator, without any cross toolchain

def test_cross_outputs_are_git_ignored_and_run_under_qemu():
    problems = []
    for port in discover():
        for arch, cross in port.manifest.cross.items():
            if cross.run[0] != "qemu-aarch64-static":
                problems.append(f"{port.name}: [cross.{arch}] run does not start with qemu-aarch64-static")
            for out in cross.outputs:
                if subprocess.run(["git", "check-ignore", "-q", str(port.dir / out)], cwd=ROOT).returncode:
                    problems.append(f"{port.name}: cross output {out} is not git-ignored")
    assert not problems, problems


def test_every_compiled_port_declares_an_arm64_build():
    """Every port we wrote in a compiled language; the Python-hosted ones and llama.cpp have none
    (README: what they would need)."""
    assert {"c", "cpp", "go", "rust", "zig", "java", "mojo"} <= set(CROSSED)


def test_a_port_without_a_cross_build_is_skipped_with_why(tmp_path):
    for name, extra in [("plain", ""), ("later", '[cross_skip]\narm64 = "needs an arm64 CPython"\n')]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "port.toml").write_text(FAKE.replace('"fake"', f'"{name}"') + extra)
    outcomes = build_all(discover(tmp_path), progress=lambda m: None, arch=ARCH)
    assert [(o.port, o.status) for o in outcomes] == [("later/arm64", "skipped"), ("plain/arm64", "skipped")]
    assert outcomes[0].detail == "needs an arm64 CPython" and "[cross.arm64]" in outcomes[1].detail


def test_a_cross_build_may_not_also_be_skipped(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "port.toml").write_text(FAKE + FAKE_CROSS + '[cross_skip]\narm64 = "no"\n')
    with pytest.raises(PolyllamaError, match="both"):
        load_manifest(tmp_path / "fake" / "port.toml")


def test_a_cross_output_of_the_wrong_architecture_fails_the_build(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "port.toml").write_text(FAKE + FAKE_CROSS)
    x86_64 = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + (62).to_bytes(2, "little")
    (tmp_path / "fake" / "run.sh").write_bytes(x86_64 + bytes(44))  # an ELF header, EM_X86_64
    [port] = discover(tmp_path)
    outcome = build_port(port.for_arch(ARCH))
    assert elf_machine(tmp_path / "fake" / "run.sh") == 62
    assert outcome.status == "failed" and "not arm64 executables: run.sh" in outcome.detail


def test_an_unknown_arch_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "invoke", "validate", "--ports", "c", "--arch", "sparc"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--arch must be" in r.stderr


# ----------------------------------------------------------------------------
# The arm64 builds under qemu

@pytest.fixture(scope="module")
def emulator():
    if shutil.which("qemu-aarch64-static") is None:
        need("qemu-aarch64-static is not installed (bash scripts/arm64-setup.sh)")


def test_the_c_port_refuses_an_arm64_build_without_neon(emulator):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        need("aarch64-linux-gnu-gcc is not installed (bash scripts/arm64-setup.sh)")
    r = subprocess.run(["aarch64-linux-gnu-gcc", "-mgeneral-regs-only", "-std=c11", "-fsyntax-only", "run.c"],
                       cwd=ROOT / "impls" / "c", capture_output=True, text=True)
    assert r.returncode != 0 and "without NEON" in r.stderr


@pytest.mark.parametrize("name", CROSSED)
def test_arm64_build_matches_the_reference_under_qemu(name, emulator, stories260k):
    [native] = select(name)
    port = native.for_arch(ARCH)
    outcome = build_port(port)  # incremental: cheap when it is up to date
    if outcome.status == "skipped":
        need(f"{name}: {outcome.detail}")
    assert outcome.status == "built", outcome.detail
    assert not foreign_outputs(port)
    models = ["stories260K"] + (["stories15M"] if name in WITH_15M else [])
    rows = validate([port], Store(), models, progress=lambda m: None, emulated=True)
    failed = [r.as_dict() for r in rows if not r.ok]
    assert not failed, failed
    cases = {r.case: r for r in rows}
    assert {"stories260K (real) v0", "stories260K (real) v1", "stories260K (real) gguf"} <= set(cases)
    assert cases["stories260K (real) v0"].sampled_identical == "yes"
    assert all(r.greedy_identical == "yes" for c, r in cases.items() if c.startswith("stories260K"))
    if name in WITH_15M:
        [short] = [r for c, r in cases.items() if c.startswith("stories15M")]
        assert short.argmax_agree == f"{EMULATED_POSITIONS}/{EMULATED_POSITIONS}"
