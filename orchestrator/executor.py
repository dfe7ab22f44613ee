"""Run one port process and measure it: wall time, CPU time, peak memory, threads, output.

The child is reaped with os.wait4, whose rusage gives exact CPU times and the kernel's peak RSS
for it; a psutil sampler adds the peak over the whole process tree (for ports that fork) and
the most threads seen. A run past its timeout is killed with its whole process group.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil

STATS_PREFIX = "polyllama-stats: "
SAMPLE_INTERVAL_S = 0.02


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


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_threads = pid, 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._halt.is_set():
            rss = threads = 0
            try:
                for p in [root] + root.children(recursive=True):
                    with p.oneshot():
                        rss += p.memory_info().rss
                        threads += p.num_threads()
            except psutil.Error:
                pass
            self.peak_rss, self.peak_threads = max(self.peak_rss, rss), max(self.peak_threads, threads)
            self._halt.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=1)


def execute(argv: list[str], cwd=None, env=None, timeout: float = 600, sample: bool = True) -> ProcResult:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    sampler = _TreeSampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    reaped = {}
    waiter = threading.Thread(target=lambda: reaped.update(r=os.wait4(proc.pid, 0)), daemon=True)
    waiter.start()  # a blocking wait4 costs nothing while the port runs; polling would
    waiter.join(timeout)
    timed_out = waiter.is_alive()
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        waiter.join()
    _, status, usage = reaped["r"]
    try:  # whatever the port left behind in its process group goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if sampler:
        sampler.stop()
    for r in readers:
        r.join(timeout=5)
    stderr = b"".join(err_chunks).decode("utf-8", errors="replace")
    stats, stats_error = parse_stats(stderr)
    return ProcResult(
        argv=argv, returncode=None if timed_out else proc.returncode, stdout=b"".join(out_chunks),
        stderr=stderr, wall_s=wall, user_s=usage.ru_utime, sys_s=usage.ru_stime,
        max_rss_kib=max(usage.ru_maxrss, (sampler.peak_rss // 1024) if sampler else 0),
        max_threads=sampler.peak_threads if sampler else 0, timed_out=timed_out,
        stats=stats, stats_error=stats_error)
