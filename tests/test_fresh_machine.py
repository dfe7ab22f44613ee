"""The README's bench command on a stock Debian 12 root file system: the base image that
scripts/podman-setup.sh makes with debootstrap (minbase: no Python, no compiler, nothing added).
From a copy of the repository, `./run bench` must install everything it needs itself and finish
with a result file."""
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, need

from orchestrator.results import resultfile

BASE = "localhost/polyllama-base:bookworm-stock"
COMMAND = "./run bench --matrix quick --ports python,c --out results/fresh.json"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _copy_of_repository(dest: Path) -> None:
    """What a clone holds: tracked files and untracked ones git does not ignore, as they are now."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (dest / name.decode()).write_bytes(src.read_bytes())
            (dest / name.decode()).chmod(src.stat().st_mode)


@pytest.mark.slow
def test_readme_bench_command_on_stock_debian(container_engine, stories260k, tmp_path):
    import docker
    client = docker.from_env(timeout=600)
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        need(f"no {BASE} image (scripts/podman-setup.sh makes it)")
    src = tmp_path / "polyllama"
    _copy_of_repository(src)
    models = stories260k.path.parent
    volumes = {str(src): {"bind": "/src", "mode": "rw"}, str(models): {"bind": "/models", "mode": "ro"}}
    env = {"POLYLLAMA_MODEL_PATH": "/models", "CI": "true"}
    if CA_BUNDLE.is_file():  # this network's TLS proxy: the host's trust store, as docker/certs does for builds
        volumes[str(CA_BUNDLE)] = {"bind": "/opt/host-ca.crt", "mode": "ro"}
        env.update(PIP_CERT="/opt/host-ca.crt", SSL_CERT_FILE="/opt/host-ca.crt")
    # first: the image really is stock (no Python, no C compiler)
    bare = client.containers.run(BASE, ["bash", "-c", "command -v python3 cc gcc || echo none"], remove=True)
    assert bare.decode().strip() == "none"
    box = client.containers.run(BASE, ["bash", "-c", f"cd /src && {COMMAND}"], detach=True, volumes=volumes,
                                environment=env, network_mode="host")
    start = time.monotonic()
    try:
        status = box.wait(timeout=2400)
        log = box.logs().decode(errors="replace")
    finally:
        box.remove(force=True)
    (ROOT / "build" / "logs").mkdir(parents=True, exist_ok=True)
    (ROOT / "build" / "logs" / "fresh-machine.log").write_text(log)
    assert status["StatusCode"] == 0, log[-3000:]
    suite = resultfile.load(src / "results" / "fresh.json")
    cells = {(c.port, c.model.name): c for c in suite.cells}
    assert set(cells) == {(p, m) for p in ("python", "c") for m in ("stories260K", "stories15M")}
    assert all(c.status == "ok" and c.runs and c.runs[0].tok_s > 0 for c in cells.values()), \
        [c.reason for c in cells.values()]
    assert cells[("c", "stories260K")].model.origin == "real"
    assert cells[("c", "stories15M")].model.origin in ("real", "synthetic")
    assert suite.host.bandwidth_gbs, "the roofline probe needs the C compiler the set-up installs"
    print(f"fresh Debian 12: `{COMMAND}` finished in {time.monotonic() - start:.0f} s")
