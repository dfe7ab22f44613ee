"""Run one port process and measure it: wall time, CPU time, peak memory, threads, output.

The harness stays asleep while a port runs, so that a port given every core gets all of them:
- the child's stdout and stderr go to unlinked temporary files, read once it has exited (no
  reader threads woken by every token it prints);
- it is reaped with os.wait4, whose rusage gives the kernel's exact CPU times and peak RSS;
- its thread count is read from /proc a few times, at instants spaced further and further apart
  (0.1 s, 0.3 s, 0.7 s, ...: about log2 of the run's length in all), since pools start early and
  stay;
- only a port whose manifest says it spawns processes (`[run] spawns = true`) has its process
  tree walked, every TREE_INTERVAL_S, for the tree's peak memory.
Before and after the run it reads the system's CPU counters and load average, so that a run
taken while other processes were busy can be marked (the quiet-machine guard).
A run past its timeout is killed with its whole process group.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STATS_PREFIX = "polyllama-stats: "
FIRST_LOOK_S = 0.1  # the first thread count; each later look waits twice as long
TREE_INTERVAL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class ProcResult:
    argv: list[str]
    returncode: int | None  # None = killed on timeout
    stdout: bytes
    stderr: str
    wall_s: float
    user_s: float = 0.0
    sys_s: float = 0.0
    max_rss_kib: int = 0  # peak resident set, KiB (kernel ru_maxrss, or the tree's sampled peak)
    max_threads: int = 0
    timed_out: bool = False
    stats: dict | None = field(default=None)
    stats_error: str | None = None
    others_cpu_s: float | None = None  # CPU time the rest of the machine used during the run
    load_avg: float | None = None  # 1-minute load average when the run started

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith(STATS_PREFIX)]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or [""])[0].strip()


def parse_stats(stderr: str) -> tuple[dict | None, str | None]:
    """The statistics line, which the contract puts last on stderr."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines or not lines[-1].startswith(STATS_PREFIX):
        return None, "no statistics line at the end of stderr"
    try:
        stats = json.loads(lines[-1][len(STATS_PREFIX):])
    except json.JSONDecodeError as e:
        return None, f"statistics line is not valid JSON: {e.msg}"
    if not isinstance(stats, dict):
        return None, "statistics line is not a JSON object"
    return stats, None


def _busy_cpu_s() -> float | None:
    """CPU time the whole machine has spent busy since boot (Linux /proc/stat), seconds."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user and nice
    return (sum(ticks) - idle - guest) / CLOCK_TICKS


def _look(pid: int) -> tuple[int, int]:
    """(threads, the process's own peak resident KiB so far, VmHWM) from /proc; VmHWM is 0 where
    there is no /proc. wait4's ru_maxrss cannot be used alone: the kernel carries the high-water
    mark of the forked harness's memory across exec into it, so every port would seem at least as
    large as the harness (which maps whole models to write GGUF exports)."""
    threads = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
        return threads, hwm
    except (OSError, ValueError):
        pass
    try:  # no /proc (macOS): psutil asks the kernel another way
        return psutil.Process(pid).num_threads(), 0
    except psutil.Error:
        return 0, 0


def _tree(pid: int) -> tuple[int, int]:
    """(resident bytes, threads) of a process and all its descendants."""
    rss = threads = 0
    try:
        root = psutil.Process(pid)
        for p in [root] + root.children(recursive=True):
            with p.oneshot():
                rss += p.memory_info().rss
                threads += p.num_threads()
    except psutil.Error:
        pass
    return rss, threads


def execute(argv: list[str], cwd=None, env=None, timeout: float = 600, tree: bool = False) -> ProcResult:
    """Run argv to its end (or its timeout) and measure it; `tree` walks its process tree."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        busy0 = _busy_cpu_s()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        reaped = {}
        waiter = threading.Thread(target=lambda: reaped.update(r=os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()  # a blocking wait4 costs nothing while the port runs
        peak_rss = peak_threads = peak_hwm = 0
        pause, deadline = (TREE_INTERVAL_S if tree else FIRST_LOOK_S), start + timeout
        while True:
            waiter.join(max(0.0, min(pause, deadline - time.perf_counter())))
            if not waiter.is_alive() or time.perf_counter() >= deadline:
                break
            if tree:
                rss, threads = _tree(proc.pid)
                peak_rss = max(peak_rss, rss)
            else:
                (threads, hwm), pause = _look(proc.pid), pause * 2
                peak_hwm = max(peak_hwm, hwm)
            peak_threads = max(peak_threads, threads)
        timed_out = waiter.is_alive()
        if timed_out:
            _kill_group(proc.pid)
            waiter.join()
        _, status, usage = reaped["r"]
        _kill_group(proc.pid)  # whatever the port left behind in its process group goes too
        wall = time.perf_counter() - start
        busy1 = _busy_cpu_s()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read().decode("utf-8", errors="replace")
    stats, stats_error = parse_stats(stderr)
    cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else None
    rss_kib = usage.ru_maxrss if os.uname().sysname != "Darwin" else usage.ru_maxrss // 1024  # bytes there
    if peak_hwm:  # the port's own high-water mark, read while it ran (see _look)
        rss_kib = peak_hwm
    return ProcResult(
        argv=argv, returncode=None if timed_out else proc.returncode, stdout=stdout, stderr=stderr, wall_s=wall,
        user_s=usage.ru_utime, sys_s=usage.ru_stime, max_rss_kib=max(rss_kib, peak_rss // 1024),
        max_threads=peak_threads, timed_out=timed_out, stats=stats, stats_error=stats_error,
        others_cpu_s=others, load_avg=load)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
