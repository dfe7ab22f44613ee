"""podman's Docker-compatible API, only while something needs it.

scripts/podman-setup.sh writes polyllama's own podman configuration (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF) into one folder; `engine()` starts `podman system service` on a socket
in that folder for the duration of a `with` block and stops it after. Where Docker (or another
engine named by DOCKER_HOST) is reachable, it is used as it is and nothing is started.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SETUP = "scripts/podman-setup.sh"


def config_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("POLYLLAMA_PODMAN_DIR") or Path(cache) / "polyllama" / "podman")


def podman_env(d: Path | None = None) -> dict[str, str]:
    d = d or config_dir()
    return {"CONTAINERS_CONF": str(d / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(d / "storage.conf")}


def configured() -> bool:
    d = config_dir()
    return shutil.which("podman") is not None and (d / "containers.conf").is_file() and (d / "storage.conf").is_file()


def _answers(sock: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        return b"OK" in s.recv(1024)
    return False


def other_engine() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


@contextlib.contextmanager
def engine(timeout_s: float = 30):
    """DOCKER_HOST set for the block: an engine already there, or podman's service started here.
    Yields why there is none (a string) when neither is available, else None."""
    if other_engine():
        yield None
        return
    if not configured():
        yield f"no Docker engine and podman is not set up (run `bash {SETUP}`)"
        return
    d = config_dir()
    sock = d / "podman.sock"
    sock.unlink(missing_ok=True)
    env = {**os.environ, **podman_env(d)}
    log = open(d / "service.log", "w")
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                yield f"podman's API service did not start (log: {d / 'service.log'})"
                return
            time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", *podman_env(d))}
        os.environ.update({"DOCKER_HOST": f"unix://{sock}", **podman_env(d)})
        try:
            yield None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        sock.unlink(missing_ok=True)
