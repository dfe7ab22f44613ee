"""What machine a suite ran on: CPU, caches, memory, OS, git commit, its measured memory read
bandwidth at each thread count of the matrix (the roofline of batch-1 decoding) and, for a suite
with prompt-processing cells, its peak f32 FMA and int8 dot-product rates (the roofline of a
batched prefill)."""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from schemas.results import Host, PeakProbe, Probe

from ..ports.discover import ROOT

PROBE_SRC = Path(__file__).parent / "probe" / "bandwidth.c"
PROBE_BIN = ROOT / "build" / "bandwidth"
PEAK_SRC = Path(__file__).parent / "probe" / "peak.c"
PEAK_BIN = ROOT / "build" / "peak"
PROBE_MIB = 1024
PROBE_PASSES = 5
PEAK_PASSES = 7


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip()
    return platform.processor() or platform.machine()


def _caches() -> dict[str, str]:
    out = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        out[f"L{level} {kind}"] = size
    return out


def _git() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
        return commit or "unknown", dirty
    except OSError:
        return "unknown", False


def probe_binary(src: Path = PROBE_SRC, exe: Path = PROBE_BIN) -> Path | None:
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    # -march=native: on arm64 it turns on the dot-product instructions the CPU has (sdot)
    flags = ["-O3", "-march=native"] if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64") else ["-O3"]
    try:
        r = subprocess.run(["cc", *flags, "-pthread", "-o", str(exe), str(src)], capture_output=True, text=True)
    except OSError:
        return None
    return exe if r.returncode == 0 else None


MIN_BYTES_PER_PROBE = 2 << 30  # small buffers get more passes, so each probe streams about this much


@dataclass(frozen=True)
class Reading:
    gbs: float
    streams: int
    method: str


def _parse(line: str) -> Reading | None:
    """`<threads> <GB/s> <kernel>,<n>-streams,<pages>` from the probe."""
    parts = line.split()
    if len(parts) != 3:
        return None
    try:
        streams = int(parts[2].split(",")[1].split("-")[0])
        return Reading(float(parts[1]), streams, parts[2])
    except (ValueError, IndexError):
        return None


def measure_bandwidth(thread_counts: list[int], nbytes: int) -> dict[int, Reading]:
    """The best read of a buffer of nbytes by thread count (every stream count the probe tries,
    best of several passes each); empty without a C compiler."""
    exe = probe_binary()
    if exe is None:
        return {}
    nbytes = max(nbytes, 4096)
    passes = max(PROBE_PASSES, min(200, MIN_BYTES_PER_PROBE // nbytes))
    out = {}
    for n in thread_counts:
        r = subprocess.run([str(exe), str(nbytes), str(n), str(passes)], capture_output=True, text=True)
        reading = _parse(r.stdout) if r.returncode == 0 else None
        if reading is not None:
            out[n] = reading
    return out


def measure_peaks(thread_counts: list[int]) -> list[PeakProbe]:
    """The f32 FMA and int8 dot-product peaks at each thread count; empty without a C compiler."""
    exe = probe_binary(PEAK_SRC, PEAK_BIN)
    if exe is None:
        return []
    out = []
    for kind in ("f32", "int8"):
        for n in thread_counts:
            r = subprocess.run([str(exe), kind, str(n), str(PEAK_PASSES)], capture_output=True, text=True)
            parts = r.stdout.split() if r.returncode == 0 else []
            if len(parts) == 3:
                out.append(PeakProbe(kind=kind, threads=n, gops=float(parts[1]), method=parts[2]))
    return out


def _governor() -> tuple[str | None, float | None]:
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    gov = mhz = None
    with contextlib.suppress(OSError, ValueError):
        gov = (base / "scaling_governor").read_text().strip()
    with contextlib.suppress(OSError, ValueError):
        mhz = int((base / "scaling_cur_freq").read_text()) / 1000
    if mhz is None:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            mhz = float(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                             if ln.startswith("cpu MHz")).split(":")[1])
    return gov, mhz


def describe_host(thread_counts: list[int], container_image: str | None = None,
                  model_bytes: tuple[int, ...] = (PROBE_MIB << 20,), peaks: bool = False) -> Host:
    """The machine, with a roofline probe at each model's own size and each thread count, and
    with `peaks` the compute peaks at each thread count."""
    commit, dirty = _git()
    probes = [Probe(bytes=b, threads=t, streams=r.streams, gbs=r.gbs, method=r.method)
              for b in sorted(set(model_bytes)) for t, r in measure_bandwidth(thread_counts, b).items()]
    largest = max(model_bytes)
    governor, mhz = _governor()
    return Host(
        hostname=socket.gethostname(),
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        caches=_caches(),
        memory_bytes=psutil.virtual_memory().total,
        os=f"{platform.system()} {platform.release()} ({platform.platform()})",
        python=platform.python_version(),
        git_commit=commit,
        git_dirty=dirty,
        bandwidth_gbs={p.threads: p.gbs for p in probes if p.bytes == largest},
        bandwidth_probe_mib=largest >> 20,
        probes=probes,
        peaks=measure_peaks(thread_counts) if peaks else [],
        cpu_governor=governor,
        cpu_mhz=mhz,
        container_image=container_image,
    )
