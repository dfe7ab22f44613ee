"""Prove that every built port computes what the reference core computes.

For each case (a model in one file format) the reference core runs in this process; each port
runs as a subprocess through the contract's command line: logits over a fixed token sequence,
greedy text, and (on real stories260K) seeded top-p sampled text. A port's cross build (Port.for_arch)
runs the same cases under its emulator, shortened for every model but stories260K (`emulated`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bench.executor import execute
from ..errors import PolyllamaError
from ..formats import read_model, read_tokenizer, write_v1
from ..models.convert import gguf_for
from ..models.store import MODELS_DIR, Resolved, Store
from ..models.synth import ensure
from ..reference import Sampler, Tokenizer, Transformer, generate, logits_for
from .build import ARCH_SETUP
from .discover import Port, tool_env

RTOL = 1e-4  # the contract's tolerance: max|port - ref| <= RTOL * (1 + max|ref|) at each position
PROMPT = b"Once upon a time, there was a"
SAMPLED = dict(temperature=0.8, topp=0.9, seed=42)
TEXT_STEPS = 96
LOGIT_POSITIONS = 24
# Under emulation (a cross build run by qemu, many times slower) the models other than these are
# checked on their logits only, over a few positions, in one format
EMULATED_IN_FULL = ("stories260K",)
EMULATED_POSITIONS = 8


@dataclass(frozen=True)
class Case:
    label: str  # e.g. "stories260K/v0 (real)"
    checkpoint: Path
    tokenizer: Path | None  # None for GGUF
    fmt: str
    resolved: Resolved
    sampled: bool  # also compare seeded sampling (real stories260K only)
    positions: int = LOGIT_POSITIONS  # logits compared at positions 0..positions-1
    text: bool = True  # also compare greedy text


@dataclass
class Expected:
    ids: list[int]
    logits: np.ndarray
    greedy: bytes | None
    sampled: bytes | None


@dataclass
class Row:
    port: str
    case: str
    max_abs_diff: float | None = None
    tolerance: float | None = None
    argmax_agree: str = "-"
    greedy_identical: str = "-"
    sampled_identical: str = "-"
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def as_dict(self) -> dict:
        return {"port": self.port, "case": self.case,
                "max |diff|": "-" if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}",
                "tolerance": "-" if self.tolerance is None else f"{self.tolerance:.2e}",
                "argmax": self.argmax_agree, "greedy text": self.greedy_identical,
                "sampled text": self.sampled_identical, "result": "ok" if self.ok else f"FAIL: {self.problem}"}


def build_cases(store: Store, models: list[str], formats: list[str], out_dir: Path = MODELS_DIR,
                emulated: bool = False) -> list[Case]:
    cases = []
    for name in models:
        r = ensure(store, name)
        sampled = r.origin == "real" and name == "stories260K"
        label = f"{name} ({r.origin})"
        short = emulated and name not in EMULATED_IN_FULL
        scope = dict(positions=EMULATED_POSITIONS, text=False) if short else {}
        if short:
            label += f" {EMULATED_POSITIONS} positions"
        if "v0" in formats:
            cases.append(Case(f"{label} v0", r.path, r.tokenizer, "v0", r, sampled, **scope))
        if short:
            continue
        if "v1" in formats:
            v1 = out_dir / (r.path.stem + ".v1.bin")
            if not v1.exists() or v1.stat().st_mtime < r.path.stat().st_mtime:
                write_v1(v1, read_model(r.path))
            cases.append(Case(f"{label} v1", v1, r.tokenizer, "v1", r, False))
        if "gguf" in formats:
            cases.append(Case(f"{label} gguf", gguf_for(r, out_dir), None, "gguf", r, False))
    return cases


def expected_for(case: Case) -> Expected:
    model = read_model(case.resolved.path)
    tok = Tokenizer(read_tokenizer(case.resolved.tokenizer, model.config.vocab_size))
    ids = tok.encode(PROMPT)
    ids = (ids + [(7 * i + 300) % model.config.vocab_size for i in range(case.positions)])
    ids = ids[: min(case.positions, model.config.seq_len)]
    logits = logits_for(Transformer(model), ids)
    greedy = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), PROMPT, TEXT_STEPS).text if case.text else None
    sampled = None
    if case.sampled:
        s = Sampler(SAMPLED["temperature"], SAMPLED["topp"], SAMPLED["seed"])
        sampled = generate(Transformer(model), tok, s, PROMPT, TEXT_STEPS).text
    return Expected(ids, logits, greedy, sampled)


def _argv(port: Port, case: Case, *flags: str) -> list[str]:
    argv = port.run_argv() + [str(case.checkpoint)]
    if case.tokenizer is not None:
        argv += ["-z", str(case.tokenizer)]
    return argv + list(flags)


def check_port(port: Port, case: Case, exp: Expected, timeout: float = 600, run=execute) -> Row:
    """`run` has execute's signature: the native executor, or a container runner's."""
    row = Row(port.label, case.label)
    env = tool_env()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.f32"
        ids = ",".join(map(str, exp.ids))
        r = run(_argv(port, case, "-m", "logits", "-k", ids, "-o", str(out), "-j", "1"),
                    cwd=port.dir, env=env, timeout=timeout)
        if r.returncode != 0:
            row.problem = f"logits run exited {r.returncode}: {r.error_line}"
            return row
        if r.stats is None:
            row.problem = f"logits run: {r.stats_error}"
            return row
        got = np.fromfile(out, dtype="<f4") if out.exists() else np.zeros(0, np.float32)
    if got.size != exp.logits.size:
        row.problem = f"logits file has {got.size} floats, expected {exp.logits.size}"
        return row
    got = got.reshape(exp.logits.shape)
    diff = np.abs(got.astype(np.float64) - exp.logits)
    per_pos_tol = RTOL * (1 + np.abs(exp.logits).max(axis=1))
    row.max_abs_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    row.tolerance = float(per_pos_tol.min())
    agree = int((got.argmax(axis=1) == exp.logits.argmax(axis=1)).sum())
    row.argmax_agree = f"{agree}/{len(exp.ids)}"
    problems = []
    if not (diff.max(axis=1) <= per_pos_tol).all():
        problems.append("logits beyond tolerance")
    if agree != len(exp.ids):
        problems.append("argmax differs")
    if exp.greedy is None:
        row.problem = "; ".join(problems)
        return row

    g = run(_argv(port, case, "-t", "0", "-n", str(TEXT_STEPS), "-i", PROMPT.decode(), "-j", "1"),
                cwd=port.dir, env=env, timeout=timeout)
    row.greedy_identical = "yes" if g.returncode == 0 and g.stdout == exp.greedy else "NO"
    if g.returncode != 0:
        problems.append(f"greedy run exited {g.returncode}: {g.error_line}")
    elif g.stdout != exp.greedy:
        problems.append("greedy text differs")
    elif g.stats is None:
        problems.append(f"greedy run: {g.stats_error}")
    if exp.sampled is not None:
        s = run(_argv(port, case, "-t", str(SAMPLED["temperature"]), "-p", str(SAMPLED["topp"]),
                          "-s", str(SAMPLED["seed"]), "-n", str(TEXT_STEPS), "-i", PROMPT.decode(), "-j", "1"),
                    cwd=port.dir, env=env, timeout=timeout)
        row.sampled_identical = "yes" if s.returncode == 0 and s.stdout == exp.sampled else "NO"
        if row.sampled_identical != "yes":
            problems.append("sampled text differs" if s.returncode == 0 else f"sampled run exited {s.returncode}")
    row.problem = "; ".join(problems)
    return row


def validate(ports: list[Port], store: Store, models: list[str], progress=print, runner=None,
             emulated: bool = False) -> list[Row]:
    """`runner`: a ContainerRunner to run the ports in containers; None runs them natively.
    `emulated`: the ports are cross builds run under an emulator: shorter cases beyond stories260K."""
    if os.environ.get("CI") == "true" and "stories260K" in models:
        r = store.resolve("stories260K", allow_synthetic=False)
        if r.origin != "real":
            raise PolyllamaError(f"CI needs the real stories260K, found {r.origin} {r.path}")
    cases = build_cases(store, models, ["v0", "v1", "gguf"], emulated=emulated)
    rows = []
    for case in cases:
        exp = expected_for(case)
        for port in ports:
            if not port.reads(case.fmt):
                continue
            built = runner.build_outcome(port).status == "built" if runner else port.outputs_present()
            if not built:
                how = f"invoke build-all --arch {port.arch}" if port.arch else "invoke build-all"
                rows.append(Row(port.label, case.label, problem=f"not built (run `{how}`)"))
                continue
            emulator = port.run_argv()[0] if port.arch else None
            if emulator and shutil.which(emulator, path=tool_env()["PATH"]) is None:
                rows.append(Row(port.label, case.label,
                                problem=f"cannot run: {emulator} not found (run `{ARCH_SETUP[port.arch]}`)"))
                continue
            progress(f"validating {port.label} on {case.label} ...")
            rows.append(check_port(port, case, exp, run=runner.execute if runner else execute))
    return rows
