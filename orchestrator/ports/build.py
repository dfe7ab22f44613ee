"""Build every discovered port, natively or for another architecture (a manifest's [cross.<arch>]);
a failure or a missing toolchain never stops the rest."""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .discover import BUILT_WITH, ROOT, Port, tool_env, toolchain_version

LOG_DIR = ROOT / "build" / "logs"
# e_machine of an ELF file built for the architecture: a cross build's executables must be its own,
# which also proves that no x86 code path (AVX2) was compiled in
ELF_MACHINES = {"arm64": 183}  # EM_AARCH64
ARCH_SETUP = {"arm64": "bash scripts/arm64-setup.sh"}


@dataclass(frozen=True)
class BuildOutcome:
    port: str
    status: str  # "built", "skipped", "failed"; for installs "present", "installed", "failed"
    detail: str
    seconds: float = 0.0
    version: str | None = None


def _tail(text: str, lines: int = 1) -> str:
    rows = [r for r in text.strip().splitlines() if r.strip()]
    return " | ".join(rows[-lines:]) if rows else ""


def run_logged(port: Port, commands: list[list[str]], log: Path, jobs: int, timeout: float) -> tuple[bool, str]:
    """Run commands in the port folder, appending to log; (ok, last error line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        for cmd in commands:
            argv = port.expand(cmd, jobs)
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            try:
                r = subprocess.run(argv, cwd=port.dir, env=tool_env(), stdout=f, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=timeout)
            except FileNotFoundError:
                return False, f"command not found: {argv[0]}"
            except subprocess.TimeoutExpired:
                return False, f"timed out after {timeout:.0f}s: {' '.join(argv)}"
            if r.returncode != 0:
                f.flush()
                return False, f"`{' '.join(cmd)}` exited {r.returncode}: {_tail(log.read_text())}"
    return True, ""


def _streamed(argv: list[str], cwd: Path, log: Path, prefix: str, timeout: float) -> tuple[bool, str]:
    """Run argv with its output shown live (prefixed) and kept in log; (ok, last output line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    with open(log, "w") as f:
        f.write(f"$ {' '.join(argv)}\n")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except FileNotFoundError:
            return False, f"command not found: {argv[0]}"
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                f.write(line)
                if line.strip():
                    last = line.strip()
                    print(f"  [{prefix}] {last}", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
    if code != 0:
        return False, f"`{' '.join(argv)}` exited {code}: {last}"
    return True, last


def install_toolchain(port: Port, timeout: float = 3600) -> BuildOutcome:
    """Install the port's toolchain when its check fails; never when it passes."""
    version = toolchain_version(port)
    if version is not None:
        return BuildOutcome(port.name, "present", "toolchain present", version=version)
    tc = port.manifest.toolchain
    if not tc.install:
        return BuildOutcome(port.name, "failed", f"toolchain missing (`{' '.join(tc.check)}` failed) and no installer")
    size = f" ({tc.size})" if tc.size else ""
    print(f"{port.name}: installing its toolchain{size} ...", flush=True)
    start = time.monotonic()
    log = LOG_DIR / f"{port.name}.install.log"
    ok, err = _streamed(port.expand(tc.install), port.dir, log, port.name, timeout)
    seconds = time.monotonic() - start
    version = toolchain_version(port) if ok else None
    if version is None:
        why = err if not ok else f"installed, but `{' '.join(tc.check)}` still fails"
        return BuildOutcome(port.name, "failed", f"{why} (log: {log.relative_to(ROOT)})", seconds)
    return BuildOutcome(port.name, "installed", "installed", seconds, version)


def install_all(ports: list[Port]) -> list[BuildOutcome]:
    return [install_toolchain(p) for p in ports]


def build_log(name: str, arch: str | None = None) -> Path:
    return LOG_DIR / (f"{name}.build.log" if arch is None else f"{name}.{arch}.build.log")


def elf_machine(path: Path) -> int | None:
    """The e_machine of an ELF file, None for any other file (a jar, a script)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def foreign_outputs(port: Port) -> list[str]:
    """The outputs of a cross build that are ELF files of another architecture."""
    want = ELF_MACHINES[port.arch]
    return [o for o in port.outputs if elf_machine(port.dir / o) not in (None, want)]


def build_port(port: Port, jobs: int = 2, timeout: float = 1800) -> BuildOutcome:
    """The native build, or the [cross.<arch>] one of a port from Port.for_arch."""
    version = toolchain_version(port)
    if version is None:
        hint = " (run `invoke install`)" if port.manifest.toolchain.install else ""
        return BuildOutcome(port.label, "skipped",
                            f"toolchain missing: `{' '.join(port.manifest.toolchain.check)}` failed{hint}")
    cross = port.cross
    if cross is not None:
        version = toolchain_version(port, check=cross.check)
        if version is None:
            return BuildOutcome(port.label, "skipped", f"{port.arch} toolchain missing: `{' '.join(cross.check)}` "
                                                      f"failed (run `{ARCH_SETUP[port.arch]}`)")
    start = time.monotonic()
    log = build_log(port.name, port.arch)
    ok, err = run_logged(port, cross.commands if cross else port.manifest.build.commands, log, jobs, timeout)
    seconds = time.monotonic() - start
    if not ok:
        return BuildOutcome(port.label, "failed", f"{err} (log: {log.relative_to(ROOT)})", seconds, version)
    missing = [o for o in port.outputs if not (port.dir / o).exists()]
    if missing:
        return BuildOutcome(port.label, "failed", f"build produced no {', '.join(missing)}", seconds, version)
    foreign = foreign_outputs(port) if cross else []
    if foreign:
        return BuildOutcome(port.label, "failed", f"not {port.arch} executables: {', '.join(foreign)}", seconds,
                            version)
    if not cross:
        (port.dir / BUILT_WITH).write_text(f"{version}\n")
    return BuildOutcome(port.label, "built", "ok", seconds, version)


def build_all(ports: list[Port], jobs: int = 2, progress=print, arch: str | None = None) -> list[BuildOutcome]:
    """Native builds, or with arch the ports' [cross.<arch>] builds (the others skipped, with why)."""
    outcomes = []
    for port in ports:
        target = port.for_arch(arch)
        if target is None:
            outcome = BuildOutcome(f"{port.name}/{arch}", "skipped", port.no_cross_reason(arch))
            progress(f"{outcome.port}: {outcome.status}: {outcome.detail}")
        else:
            progress(f"building {target.label} ...")
            outcome = build_port(target, jobs)
            progress(f"  {outcome.status}: {outcome.detail}")
        outcomes.append(outcome)
    return outcomes
