"""Cells and validation runs inside containers, through the Docker SDK (Docker, or podman's
Docker-compatible API: see scripts/podman-setup.sh).

Inside the image the repository lives at /opt/polyllama. Host paths in a command are mapped:
the repository to /opt/polyllama, the host interpreter to the image's, and any other absolute
path (models, output files) is bind-mounted at the same path, read-only unless it is written.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..process import ProcResult, parse_stats
from ..errors import PolyllamaError
from ..ports.build import BuildOutcome
from ..ports.discover import ROOT, Port

IMAGE_ROOT = "/opt/polyllama"
LOCAL_BASE = "localhost/polyllama-base:bookworm-stock"
DEFAULT_BASE = "debian:bookworm-slim"
WRITABLE_FLAGS = ("-o",)
IMAGE_CODE = ("impls", "orchestrator", "schemas", "tasks.py")  # what the image carries itself


def _client():
    try:
        import docker  # lazy: only --docker runs talk to an engine
    except ImportError:
        raise PolyllamaError("the docker Python package is not installed (pip install docker)") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # the SDK raises several unrelated types for "no engine"
        host = os.environ.get("DOCKER_HOST", "the default socket")
        raise PolyllamaError(f"no container engine reachable at {host}: {str(e).splitlines()[0][:160]} "
                             f"(start Docker, or run scripts/podman-setup.sh and export DOCKER_HOST)") from None
    return client


def git_tag() -> str:
    r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return f"polyllama:{r.stdout.strip() or 'dev'}"


PLATFORMS = {"linux/amd64": None, "linux/arm64": "arm64"}  # platform -> tag and base suffix


def build_image(target: str = "full", tag: str | None = None, base: str | None = None, log=print,
                platform: str | None = None) -> str:
    """Build the Dockerfile's target; returns the tag. Build output goes to build/logs/docker.log.

    A foreign platform (linux/arm64 on an x86-64 host) builds under qemu through binfmt_misc,
    from a base image of that architecture (scripts/podman-setup.sh --arch arm64)."""
    if platform is not None and platform not in PLATFORMS:
        raise PolyllamaError(f"--platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    arch = PLATFORMS.get(platform) if platform else None
    client = _client()
    if base is None:
        local = LOCAL_BASE + (f"-{arch}" if arch else "")
        base = os.environ.get("POLYLLAMA_BASE_IMAGE") or (local if _has_image(client, local) else DEFAULT_BASE)
    tag = tag or git_tag() + ("" if target == "full" else f"-{target}") + (f"-{arch}" if arch else "")
    _stage_host_ca()
    logfile = ROOT / "build" / "logs" / "docker.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"building image {tag} (target {target}, base {base}{', ' + platform if platform else ''}); "
        f"log: {logfile.relative_to(ROOT)}")
    error = None
    with open(logfile, "w") as f:
        for chunk in client.api.build(path=str(ROOT), dockerfile="Dockerfile", tag=tag, target=target,
                                      buildargs={"BASE": base}, network_mode="host", rm=True, decode=True,
                                      platform=platform):
            if "stream" in chunk:
                f.write(chunk["stream"])
            if "error" in chunk:
                error = chunk["error"].strip()
                f.write(error + "\n")
    if error:
        raise PolyllamaError(f"image build failed: {error.splitlines()[-1][:200]} (see {logfile})")
    _prune(client, tag)
    return tag


def _prune(client, keep: str) -> None:
    """Older polyllama images of the same target, and dangling layers, go: with podman's vfs
    driver every layer is a full copy, and a few builds fill a disk."""
    def variant(tag: str) -> str:  # "polyllama:<commit>-slim" -> "slim"
        return tag.split(":", 1)[1].partition("-")[2]

    keep = keep.split("/")[-1]
    for image in client.images.list():
        for full in image.tags:
            tag = full.split("/")[-1]
            if tag.startswith("polyllama:") and tag != keep and variant(tag) == variant(keep):
                try:  # by tag, not by id: an unchanged rebuild is the same image under both tags
                    client.images.remove(full)
                except Exception:
                    pass  # in use by a container: it goes next time
    try:
        client.images.prune(filters={"dangling": True})
    except Exception:
        pass


def _stage_host_ca() -> None:
    """Behind a TLS-inspecting proxy, pip inside the build needs the host's CA bundle."""
    dest = ROOT / "docker" / "certs" / "host-ca.crt"
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        src = os.environ.get(var)
        if src and Path(src).is_file():
            dest.write_bytes(Path(src).read_bytes())
            return
    dest.unlink(missing_ok=True)


def _has_image(client, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except Exception:
        return False


def _wait(container, timeout: float) -> dict:
    """The container's exit status, asked for at a gentle pace. Not the engine's `wait` call:
    podman 4's Docker-compatible `wait` polls in a busy loop inside the service (measured: 6.1 s
    of CPU over a 5.1 s wait), which took a core from the port being measured and halved a
    two-thread cell (README, "Containers")."""
    deadline, pause = time.monotonic() + timeout, 0.02
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return {"StatusCode": container.attrs["State"]["ExitCode"]}
        if time.monotonic() > deadline:
            raise TimeoutError(f"container {container.short_id} still running after {timeout:.0f} s")
        time.sleep(pause)
        pause = min(2 * pause, 0.5)


class ContainerRunner:
    def __init__(self, client, image: str, memory: str = "8g"):
        self.client, self.image, self.memory = client, image, memory
        try:
            self.image_id = client.images.get(image).id
        except Exception:
            raise PolyllamaError(f"no image {image}; build it with `invoke build-all --docker`") from None
        self._built = None

    @classmethod
    def connect(cls, image: str | None = None, memory: str = "8g") -> "ContainerRunner":
        client = _client()
        return cls(client, image or os.environ.get("POLYLLAMA_IMAGE") or git_tag(), memory)

    # ------------------------------------------------------------ what the image holds
    def built_ports(self) -> dict[str, str | None]:
        if self._built is None:
            # the full image carries each port's outputs, not its compiler: then the toolchain
            # line recorded when the stage built it
            code = ("import json; from orchestrator.ports.discover import built_with, discover, toolchain_version; "
                    "print(json.dumps({p.name: toolchain_version(p) or built_with(p) "
                    "for p in discover() if p.outputs_present()}))")
            out = self.client.containers.run(self.image, ["python", "-c", code], remove=True, network_mode="none")
            self._built = json.loads(out.decode().strip().splitlines()[-1])
        return self._built

    def build_outcome(self, port: Port) -> BuildOutcome:
        built = self.built_ports()
        if port.name in built:
            return BuildOutcome(port.name, "built", f"in image {self.image}", version=built[port.name])
        return BuildOutcome(port.name, "skipped", f"not built in image {self.image}")

    # ------------------------------------------------------------ running
    def _map(self, argv: list[str]) -> tuple[list[str], dict]:
        mounts, out = {}, []
        root = str(ROOT)
        for i, arg in enumerate(argv):
            if arg == sys.executable:
                arg = "python"
            elif arg.startswith(root + "/") and Path(arg).relative_to(root).parts[0] in IMAGE_CODE:
                arg = IMAGE_ROOT + arg[len(root):]
            elif arg.startswith("/") and Path(arg).parent.is_dir():
                parent = str(Path(arg).parent)
                writable = i > 0 and argv[i - 1] in WRITABLE_FLAGS
                mode = "rw" if writable or mounts.get(parent, {}).get("mode") == "rw" else "ro"
                mounts[parent] = {"bind": parent, "mode": mode}
            out.append(arg)
        return out, mounts

    def execute(self, argv: list[str], cwd=None, env=None, timeout: float = 600, tree: bool = False,
                threads: int | None = None) -> ProcResult:
        mapped, mounts = self._map(argv)
        workdir = IMAGE_ROOT + str(cwd)[len(str(ROOT)):] if cwd and str(cwd).startswith(str(ROOT)) else IMAGE_ROOT
        cpus = threads or os.cpu_count() or 1
        cpuset = f"0-{min(cpus, os.cpu_count() or 1) - 1}"
        command = ["python", "-m", "orchestrator.containers.contained", str(timeout), "1" if tree else "0", "--", *mapped]
        container = self.client.containers.run(self.image, command, detach=True, volumes=mounts, working_dir=workdir,
                                               cpuset_cpus=cpuset, mem_limit=self.memory, network_mode="none",
                                               environment={"POLYLLAMA_ROOT": IMAGE_ROOT})
        try:
            try:
                status = _wait(container, timeout + 60)
            except Exception:  # the engine did not answer in time: the run is a timeout
                return ProcResult(argv, None, b"", "", timeout, timed_out=True, stats_error="timed out")
            logs = container.logs(stdout=True, stderr=False).decode()
            errs = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            try:
                container.remove(force=True)
            except Exception:
                pass
        if status.get("StatusCode") != 0 or not logs.strip():
            return ProcResult(argv, status.get("StatusCode"), b"", errs or "container failed", 0.0,
                              stats=None, stats_error="container failed before the port ran")
        record = json.loads(logs.strip().splitlines()[-1])
        record["stdout"] = base64.b64decode(record["stdout"])
        record["argv"] = argv
        stats, stats_error = parse_stats(record["stderr"])
        record.update(stats=stats, stats_error=stats_error)
        return ProcResult(**record)

    def __call__(self, spec, timeout: float) -> ProcResult:
        return self.execute(spec.argv(), cwd=spec.port.dir, timeout=timeout, threads=spec.threads,
                            tree=spec.port.manifest.run.spawns)
