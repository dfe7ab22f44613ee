"""The long container checks: the full image with every port, built with the
same pinned toolchains as the host and validated inside; and the slim image built for
linux/arm64 under qemu, whose C port prints what the x86 reference prints.

Marked `long` (tens of minutes each, most of it compiling; the README's container section gives
the measured times), so the default `invoke test` leaves them out. Run them with

    .venv/bin/python -m pytest -m long tests/test_images.py
"""

import os

import pytest
from conftest import need

from orchestrator.process import execute
from orchestrator.errors import PolyllamaError
from orchestrator.ports.discover import discover, tool_env

pytestmark = pytest.mark.long

ROWS = 11  # the study's rows: seven compiled ports, the reference, two frameworks, the llama.cpp peer


def _runner(target: str, platform: str | None = None):
    from orchestrator.containers.engine import ContainerRunner, _client, build_image
    try:
        _client()
    except PolyllamaError as e:
        need(f"no container engine: {e}")
    suffix = f"_{platform.split('/')[-1]}" if platform else ""
    image = os.environ.get(f"POLYLLAMA_{target.upper()}{suffix.upper()}_IMAGE")  # reuse one built by hand
    return ContainerRunner.connect(image or build_image(target, log=lambda m: None, platform=platform))


@pytest.fixture(scope="module")
def full(container_engine):
    return _runner("full")


def test_full_image_holds_every_row(full):
    built = full.built_ports()
    assert len(discover()) == ROWS
    assert sorted(built) == sorted(p.name for p in discover())


def test_full_image_toolchains_are_the_native_ones(full):
    """A pinned toolchain reports its pin inside and out; an unpinned one (Debian's gcc, JDK 17,
    llama.cpp's source) the same version line, since both come from the same archives. The
    reference row's interpreter is the exception: the image has Debian's Python 3.11, the host
    whichever 3.11+ bootstrap found; its numpy (the arithmetic) must match."""
    from orchestrator.ports.discover import toolchain_version
    built = full.built_ports()
    pinned = [p for p in discover() if p.manifest.toolchain.pin]
    assert len(pinned) >= 5, [p.name for p in pinned]
    for port in discover():
        inside, native = built[port.name] or "", toolchain_version(port) or ""
        if port.manifest.toolchain.pin:
            assert port.manifest.toolchain.pin in inside, (port.name, inside)
        elif port.name == "python":
            assert inside.split(", ")[-1] == native.split(", ")[-1], (inside, native)
        else:
            assert native and inside == native, (port.name, inside, native)


def test_full_image_validates_every_row(full, stories260k):
    from orchestrator import app
    assert app.validate(None, "stories260K,stories15M", True, full.image, None) == 0


@pytest.fixture(scope="module")
def slim_arm64(container_engine):
    if not os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64"):
        need("no qemu-aarch64 binfmt handler (run scripts/arm64-setup.sh)")
    return _runner("slim", platform="linux/arm64")


def test_arm64_image_is_arm64(slim_arm64):
    out = slim_arm64.client.containers.run(slim_arm64.image, ["uname", "-m"], remove=True, network_mode="none")
    assert out.decode().strip() == "aarch64"


@pytest.mark.parametrize("name", ["c", "python"])
def test_arm64_image_port_matches_the_native_reference(slim_arm64, stories260k, name):
    """C's NEON build and the reference on arm64 numpy, both emulated, against x86's reference."""
    ports = {p.name: p for p in discover()}
    reference, port = ports["python"], ports[name]
    args = [str(stories260k.path), "-z", str(stories260k.tokenizer), "-t", "0", "-n", "80", "-i", "Once upon"]
    native = execute(reference.run_argv() + args, cwd=reference.dir, env=tool_env(), timeout=300)
    boxed = slim_arm64.execute(port.run_argv() + args, cwd=port.dir, timeout=900, threads=2)
    assert native.returncode == 0, native.stderr
    assert boxed.returncode == 0, boxed.stderr
    assert boxed.stdout == native.stdout
    assert boxed.stats and boxed.stats["port"] == name
