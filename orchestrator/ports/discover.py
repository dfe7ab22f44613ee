"""Port discovery: glob `impls/*/port.toml`, validate each manifest, expand its placeholders.

Nothing here knows a language by name; a port is whatever its manifest says.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from schemas.port import Cross, PortManifest

from ..errors import PolyllamaError, UsageError, first_error

ROOT = Path(__file__).resolve().parents[2]
IMPLS = ROOT / "impls"


@dataclass(frozen=True)
class Port:
    manifest: PortManifest
    dir: Path
    arch: str | None = None  # None: the native build; else the manifest's [cross.<arch>] build

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def label(self) -> str:
        """The name in tables: `c`, or `c/arm64` for a cross build."""
        return self.name if self.arch is None else f"{self.name}/{self.arch}"

    @property
    def cross(self) -> Cross | None:
        return self.manifest.cross[self.arch] if self.arch is not None else None

    def for_arch(self, arch: str | None) -> Port | None:
        """This port's build for arch (None = native), or None when its manifest declares none."""
        if arch is not None and arch not in self.manifest.cross:
            return None
        return replace(self, arch=arch)

    def no_cross_reason(self, arch: str) -> str:
        """Why there is no build for arch: the manifest's [cross_skip] line, or that it declares none."""
        return self.manifest.cross_skip.get(arch) or f"its port.toml declares no [cross.{arch}] build"

    def expand(self, argv: list[str], jobs: int = 1) -> list[str]:
        subs = {"{python}": sys.executable, "{port_dir}": str(self.dir), "{root}": str(ROOT), "{jobs}": str(jobs),
                "{pin}": self.manifest.toolchain.pin}
        out = []
        for arg in argv:
            for key, value in subs.items():
                arg = arg.replace(key, value)
            if "/" in arg and not arg.startswith(("/", "-")) and "=" not in arg and not any(c.isspace() for c in arg):
                arg = str(self.dir / arg)
            out.append(arg)
        return out

    def run_argv(self) -> list[str]:
        return self.expand(self.cross.run if self.cross else self.manifest.run.command)

    @property
    def outputs(self) -> list[str]:
        return self.cross.outputs if self.cross else self.manifest.build.outputs

    def outputs_present(self) -> bool:
        return all((self.dir / o).exists() for o in self.outputs)

    def reads(self, fmt: str) -> bool:
        return fmt in self.manifest.formats


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for builds, runs and tests: the interpreter's bin first on PATH."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["POLYLLAMA_ROOT"] = str(ROOT)
    # ports run in their own folders: a relative model path would point elsewhere there
    if env.get("POLYLLAMA_MODEL_PATH"):
        env["POLYLLAMA_MODEL_PATH"] = os.pathsep.join(
            str(Path(p).expanduser().resolve()) for p in env["POLYLLAMA_MODEL_PATH"].split(os.pathsep) if p)
    env.setdefault("PYTHONPATH", str(ROOT))
    if extra:
        env.update(extra)
    return env


def load_manifest(path: Path) -> PortManifest:
    try:
        data = tomllib.loads(path.read_text())
        manifest = PortManifest(**data)
    except tomllib.TOMLDecodeError as e:
        raise PolyllamaError(f"{path}: not valid TOML: {e}") from None
    except ValidationError as e:
        raise PolyllamaError(f"{path}: {first_error(e)}") from None
    if manifest.name != path.parent.name:
        raise PolyllamaError(f"{path}: name {manifest.name!r} must equal its folder {path.parent.name!r}")
    return manifest


def discover(impls: Path = IMPLS) -> list[Port]:
    return [Port(load_manifest(p), p.parent) for p in sorted(impls.glob("*/port.toml"))]


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def select(wanted_names: str | None, impls: Path = IMPLS, skip: str | None = None) -> list[Port]:
    """The ports named in a comma-separated list (all of them when empty), less those in skip."""
    ports = discover(impls)
    known = {p.name: p for p in ports}
    wanted, skipped = names(wanted_names), names(skip)
    unknown = [n for n in wanted + skipped if n not in known]
    if unknown:
        raise UsageError(f"unknown port(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[n] for n in wanted] if wanted else ports
    return [p for p in chosen if p.name not in skipped]


BUILT_WITH = ".built-with"  # in a port's folder: the toolchain line of its last native build


def built_with(port: Port) -> str | None:
    """The toolchain its outputs were built with, as recorded by the build: what a container
    image that carries the outputs but not the compiler (the full image) can still report."""
    try:
        return (port.dir / BUILT_WITH).read_text().strip() or None
    except OSError:
        return None


def toolchain_version(port: Port, timeout: float = 60, check: list[str] | None = None) -> str | None:
    """The first line the toolchain check (or the given one) prints, or None when the toolchain is missing."""
    try:
        r = subprocess.run(port.expand(check or port.manifest.toolchain.check), cwd=port.dir, env=tool_env(),
                           capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    lines = [ln.strip() for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else "unknown version"
