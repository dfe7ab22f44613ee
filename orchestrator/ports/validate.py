"""Prove that every built port computes what the reference core computes.

For each case (a model in one file format) the reference core runs in this process; each port
runs as a subprocess through the contract's command line: logits over a fixed token sequence,
greedy text, and (on real stories260K) seeded top-p sampled text. A port's cross build (Port.for_arch)
runs the same cases under its emulator, shortened for every model but stories260K (`emulated`).
Q8_0 models are held to what rounding lets a correct port do (orchestrator/ports/rounding.py); a
peer that reads GGUF but does not list gguf-q8_0 is run on them too and reported, not judged.
F16 and BF16 files are held to the float32 tolerance, except a peer (llama.cpp), which rounds its
activations to 16 bits and is held to the looser REFEREE_RTOL: a second referee for the reference's
reading of those files, not a check of float32 rounding.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.results import ValidationRow

from ..process import execute
from ..errors import PolyllamaError
from ..files import write_atomic
from ..formats import read_model, read_tokenizer, write_v1
from ..models.convert import gguf_for
from ..models.store import MODELS_DIR, Resolved, Store
from ..models.synth import ensure, ensure_typed
from ..reference import Sampler, Tokenizer, Transformer, generate, logits_for
from . import rounding
from .build import ARCH_SETUP
from .discover import Port, tool_env

RTOL = 1e-4  # the contract's tolerance: max|port - ref| <= RTOL * (1 + max|ref|) at each position
# Q8_0 past the positions kept clear of rounding ties (docs/port-contract.md, section 8): one
# activation rounded the other way, and what it sets off downstream, moved the logits by up to
# 2.3% of (1 + max|ref|) on stories260K and 0.8% on the stories15M shape (90 trials); twice the larger
Q8_RTOL = 5e-2
# llama.cpp rounds the activation to the weight's 16-bit type (docs/port-contract.md, "GGUF F16
# and BF16"): measured against the reference's float32 activations, up to 6e-4 (F16) and 7e-3
# (BF16) of (1 + max|ref|) on stories260K and the stories15M shape; about three times that
REFEREE_RTOL = {"gguf-f16": 2e-3, "gguf-bf16": 2e-2}
HALF_FORMATS = tuple(REFEREE_RTOL)
FORMATS = ["v0", "v1", "gguf", "gguf-q8_0", *HALF_FORMATS]
PROMPT = b"Once upon a time, there was a"
SAMPLED = dict(temperature=0.8, topp=0.9, seed=42)
TEXT_STEPS = 96
# Long enough for the batch sweep below to leave a ragged last batch at 7 and at 64
LOGIT_POSITIONS = 80
# A contract-2 port's logits at these (batch, threads), None = the whole sequence in one batch: an
# odd size and one that does not divide the positions (docs/port-contract.md, section 8), on the
# cases that sweep; every other case runs the default batch (the whole sequence) on one thread
SWEEP = ((1, 1), (7, 1), (64, 1), (None, 1), (7, 2), (None, 2))
SWEPT_FORMATS = ("v0", "gguf-q8_0", *HALF_FORMATS)  # and "gguf" for a port that does not read v0
# Under emulation (a cross build run by qemu, many times slower) the models other than these are
# checked on their logits only, over a few positions, in one format
EMULATED_IN_FULL = ("stories260K",)
EMULATED_POSITIONS = 8
# A GGUF-only shape (TinyLlama-1.1B, Llama-2-7B) is checked on its logits over this window of
# positions, which the reference runs as one batch (one pass over the weights; a token at a time,
# 1.1B of 16-bit weights widened per position would take minutes)
GGUF_ONLY_WINDOW = 16


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
    rtol: np.ndarray | None = None  # per position (default RTOL everywhere)
    tight: int | None = None  # Q8_0: positions 0..tight-1 have no rounding near a tie
    steps: list[rounding.Step] | None = None  # Q8_0: the greedy run's positions
    referee: bool = False  # a peer's loose tolerance everywhere, not Q8_0's tie rule

    def tolerances(self) -> np.ndarray:
        """The absolute tolerance at each position."""
        rtol = np.full(len(self.ids), RTOL) if self.rtol is None else self.rtol
        return rtol * (1 + np.abs(self.logits).max(axis=1))


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
    note: str = ""
    report_only: bool = False  # a peer run on a format it does not list: shown, never a failure

    @property
    def ok(self) -> bool:
        return self.report_only or not self.problem

    def as_dict(self) -> dict:
        return {"port": self.port, "case": self.case,
                "max |diff|": "-" if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}",
                "tolerance": "-" if self.tolerance is None else f"{self.tolerance:.2e}",
                "argmax": self.argmax_agree, "greedy text": self.greedy_identical,
                "sampled text": self.sampled_identical, "result": self._result(), "note": self.note}

    def record(self) -> ValidationRow:
        """The row as the result schema keeps it (a suite's `validation`, `invoke validate --out`):
        the only place a Row becomes a ValidationRow, so the two cannot drift apart."""
        return ValidationRow(port=self.port, case=self.case, ok=self.ok, max_abs_diff=self.max_abs_diff,
                             tolerance=self.tolerance, argmax_agree=self.argmax_agree,
                             greedy_identical=self.greedy_identical, sampled_identical=self.sampled_identical,
                             problem=self.problem, note=self.note, report_only=self.report_only)

    def _result(self) -> str:
        if self.report_only:
            return f"report only: {self.problem}" if self.problem else "report only"
        return "ok" if self.ok else f"FAIL: {self.problem}"


def _gguf_only_cases(store: Store, name: str, formats: list[str]) -> list[Case]:
    """A GGUF-only shape's synthetic files, one case per type that a port reads: logits only."""
    types = [f.split("-")[1] for f in ("gguf-f16", "gguf-bf16", "gguf-q8_0") if f in formats]
    r = ensure(store, name, types=types)
    return [Case(f"{name} ({r.origin}) gguf {t} {GGUF_ONLY_WINDOW} positions", ensure_typed(store, name, t), None,
                 f"gguf-{t}", r, False, positions=GGUF_ONLY_WINDOW, text=False) for t in types]


def build_cases(store: Store, models: list[str], formats: list[str], out_dir: Path = MODELS_DIR,
                emulated: bool = False) -> list[Case]:
    cases = []
    for name in models:
        if store.entry(name).gguf:
            cases += _gguf_only_cases(store, name, formats)
            continue
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
        if "gguf-q8_0" in formats:
            cases.append(Case(f"{label} gguf q8_0", gguf_for(r, out_dir, type="q8_0"), None, "gguf-q8_0", r, False))
        for fmt in HALF_FORMATS:
            if fmt in formats:
                kind = fmt.split("-")[1]
                cases.append(Case(f"{label} gguf {kind}", gguf_for(r, out_dir, type=kind), None, fmt, r, False))
    return cases


def _default_ids(tok: Tokenizer, model, positions: int) -> list[int]:
    ids = tok.encode(PROMPT)
    ids = (ids + [(7 * i + 300) % model.config.vocab_size for i in range(positions)])
    return ids[: min(positions, model.config.seq_len)]


def expected_for(case: Case) -> Expected:
    """The reference on the case's weights: the .bin's for the formats that hold them exactly (v0,
    v1, F32 GGUF), the file's own for Q8_0 and the 16-bit types."""
    if case.resolved.gguf:
        return expected_window(case)
    if case.fmt == "gguf-q8_0":
        return expected_q8(case)
    if case.fmt in HALF_FORMATS:
        model = read_model(case.checkpoint)
        tok = Tokenizer(model.tokenizer, model.config.bos_id, model.config.eos_id)
    else:
        model = read_model(case.resolved.path)
        tok = Tokenizer(read_tokenizer(case.resolved.tokenizer, model.config.vocab_size))
    ids = _default_ids(tok, model, case.positions)
    logits = logits_for(Transformer(model), ids)
    greedy = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), PROMPT, TEXT_STEPS).text if case.text else None
    sampled = None
    if case.sampled:
        s = Sampler(SAMPLED["temperature"], SAMPLED["topp"], SAMPLED["seed"])
        sampled = generate(Transformer(model), tok, s, PROMPT, TEXT_STEPS).text
    return Expected(ids, logits, greedy, sampled)


def expected_window(case: Case) -> Expected:
    """A GGUF-only shape: the reference's logits over the window, as one batch. Q8_0 there has no
    tie-free token to find (section 8: already the stories15M shape has none), so it is held to
    the loose tolerance throughout."""
    model = read_model(case.checkpoint)
    tok = Tokenizer(model.tokenizer, model.config.bos_id, model.config.eos_id)
    ids = _default_ids(tok, model, case.positions)
    logits = logits_for(Transformer(model, rows=len(ids)), ids, batch=len(ids))
    if case.fmt != "gguf-q8_0":
        return Expected(ids, logits, None, None)
    return Expected(ids, logits, None, None, np.full(len(ids), Q8_RTOL), tight=0)


def expected_q8(case: Case) -> Expected:
    """The Q8_0 file itself through the reference: logits over tokens that keep clear of rounding
    ties (tight tolerance) as far as they exist, and greedy text with each step's rounding record."""
    model = read_model(case.checkpoint)
    tok = Tokenizer(model.tokenizer, model.config.bos_id, model.config.eos_id)
    ids, tight = rounding.tie_free_ids(model, _default_ids(tok, model, case.positions))
    logits = logits_for(Transformer(model), ids)
    rtol = np.where(np.arange(len(ids)) < tight, RTOL, Q8_RTOL)
    greedy, steps = None, None
    if case.text:
        watched, pieces = rounding.Watched(model), []
        greedy = generate(watched, tok, Sampler(0.0, 0.9, 1), PROMPT, TEXT_STEPS, emit=pieces.append).text
        steps = rounding.steps_of(watched, pieces)
    return Expected(ids, logits, greedy, None, rtol, tight, steps)


def _argv(port: Port, case: Case, *flags: str) -> list[str]:
    argv = port.run_argv() + [str(case.checkpoint)]
    if case.tokenizer is not None:
        argv += ["-z", str(case.tokenizer)]
    return argv + list(flags)


def _logit_runs(port: Port, case: Case, n: int) -> list[tuple[list[str], str]]:
    """(flags, label) of each logits run: a contract-1 port has no -b and runs once on one thread."""
    if port.manifest.contract < 2:
        return [(["-j", "1"], "")]
    swept = case.fmt in SWEPT_FORMATS or (case.fmt == "gguf" and not port.reads("v0"))
    sweep = SWEEP if swept and case.positions == LOGIT_POSITIONS else ((None, 1),)
    return [(["-b", str(b or n), "-j", str(j)], f"-b {b or n} -j {j}") for b, j in sweep]


def check_port(port: Port, case: Case, exp: Expected, timeout: float = 600, run=execute) -> Row:
    """`run` has execute's signature: the native executor, or a container runner's. The logits
    must hold at every batch size and thread count run; the row shows the worst of them."""
    row = Row(port.label, case.label)
    env = tool_env()
    per_pos_tol = exp.tolerances()
    row.tolerance = float(per_pos_tol.min())
    problems, worst, agree = [], None, None
    runs = _logit_runs(port, case, len(exp.ids))
    for flags, label in runs:
        where = f" at {label}" if label else ""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "logits.f32"
            ids = ",".join(map(str, exp.ids))
            r = run(_argv(port, case, "-m", "logits", "-k", ids, "-o", str(out), *flags),
                    cwd=port.dir, env=env, timeout=timeout)
            if r.returncode != 0:
                row.problem = f"logits run{where} exited {r.returncode}: {r.error_line}"
                return row
            if r.stats is None:
                row.problem = f"logits run{where}: {r.stats_error}"
                return row
            got = np.fromfile(out, dtype="<f4") if out.exists() else np.zeros(0, np.float32)
        if got.size != exp.logits.size:
            row.problem = f"logits file{where} has {got.size} floats, expected {exp.logits.size}"
            return row
        got = got.reshape(exp.logits.shape)
        diff = np.abs(got.astype(np.float64) - exp.logits)
        diff = np.where(np.isfinite(diff), diff, np.inf)
        same = got.argmax(axis=1) == exp.logits.argmax(axis=1)
        if not (diff.max(axis=1) <= per_pos_tol).all():
            problems.append(f"logits beyond tolerance{where}")
        if not _argmax_ok(exp, same, per_pos_tol):
            problems.append(f"argmax differs{where}")
        if worst is None or diff.max() > worst.max():
            worst = diff
        agree = same if agree is None else agree & same
    diff = worst
    row.max_abs_diff = float(diff.max())
    row.argmax_agree = f"{int(agree.sum())}/{len(exp.ids)}"
    if exp.tight is not None:
        row.note = _q8_note(exp, diff)
    if len(runs) > 1:
        row.note = "; ".join(filter(None, ["logits at " + ", ".join(label for _, label in runs), row.note]))
    if exp.greedy is None:
        row.problem = "; ".join(problems)
        return row

    g = run(_argv(port, case, "-t", "0", "-n", str(TEXT_STEPS), "-i", PROMPT.decode(), "-j", "1"),
                cwd=port.dir, env=env, timeout=timeout)
    row.greedy_identical = "yes" if g.returncode == 0 and g.stdout == exp.greedy else "NO"
    if g.returncode != 0:
        problems.append(f"greedy run exited {g.returncode}: {g.error_line}")
    elif g.stdout != exp.greedy and not _parts_at_a_tie(row, exp, g.stdout):
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


def _argmax_ok(exp: Expected, same: np.ndarray, tol: np.ndarray) -> bool:
    """float32: the argmax everywhere. Q8_0: wherever the reference's two best logits are further
    apart than the logits may move (past the tie-free positions a rounding may have gone the
    other way)."""
    if exp.tight is None:
        return bool(same.all())
    top2 = np.sort(exp.logits, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0] > 2 * tol) | (np.arange(len(exp.ids)) < exp.tight)
    return bool(same[decided].all())


def _q8_note(exp: Expected, diff: np.ndarray) -> str:
    n, k = len(exp.ids), exp.tight
    worst = diff.max(axis=1) / (1 + np.abs(exp.logits).max(axis=1))
    if exp.referee:
        return f"relative {exp.rtol[0]:.0e} at 0-{n - 1} (max {worst.max():.1e})"
    parts = [f"relative {RTOL:.0e} at tie-free positions 0-{k - 1} (max {worst[:k].max():.1e})" if k
             else "no tie-free position"]
    if k < n:
        parts.append(f"{exp.rtol[k]:.0e} at {k}-{n - 1} (max {worst[k:].max():.1e})")
    return ", ".join(parts)


def _parts_at_a_tie(row: Row, exp: Expected, got: bytes) -> bool:
    """Greedy Q8_0 text that parts from the reference's where a correct port may: noted, allowed."""
    if exp.steps is None:
        return False
    step, allowed = rounding.parting(exp.greedy, got, exp.steps, Q8_RTOL)
    if allowed:
        row.greedy_identical = f"to step {step}"
        row.note += f"; greedy text parts at step {step}, after a rounding near a tie, where the " \
                    f"two best logits are {exp.steps[step].gap:.3f} apart"
    return allowed


def validate(ports: list[Port], store: Store, models: list[str], progress=print, runner=None,
             emulated: bool = False, formats: list[str] = FORMATS) -> list[Row]:
    """`runner`: a ContainerRunner to run the ports in containers; None runs them natively.
    `emulated`: the ports are cross builds run under an emulator: shorter cases beyond stories260K.
    `formats`: the model formats to make cases of (`invoke bench` asks only for those its cells read)."""
    if os.environ.get("CI") == "true" and "stories260K" in models:
        r = store.resolve("stories260K", allow_synthetic=False)
        if r.origin != "real":
            raise PolyllamaError(f"CI needs the real stories260K, found {r.origin} {r.path}")
    cases = build_cases(store, models, formats, emulated=emulated)
    rows = []
    for case in cases:
        chosen = [p for p in ports if p.reads(case.fmt) or _peer_report(p, case)]
        if not chosen:
            continue
        exp = expected_for(case)
        for port in chosen:
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
            referee = case.fmt in HALF_FORMATS and port.manifest.role == "peer"
            row = check_port(port, case, _as_referee(exp, case) if referee else exp,
                             run=runner.execute if runner else execute)
            if referee:
                row.note = "; ".join(filter(None, [
                    f"second referee: rounds activations to 16 bits, held to {REFEREE_RTOL[case.fmt]:.0e}", row.note]))
            if not port.reads(case.fmt):
                row.report_only = True
                row.note = (f"{port.name} does not list {case.fmt}: shown, not judged; " + row.note).rstrip("; ")
            rows.append(row)
    return rows


def _as_referee(exp: Expected, case: Case) -> Expected:
    """What a peer with llama.cpp's 16-bit arithmetic is held to: its logits within REFEREE_RTOL, the
    argmax wherever the two best logits are further apart than that; no text (a close call may
    go either way)."""
    rtol = np.full(len(exp.ids), REFEREE_RTOL[case.fmt])
    return Expected(exp.ids, exp.logits, None, None, rtol, tight=0, referee=True)


def _peer_report(port: Port, case: Case) -> bool:
    """A peer engine that reads GGUF is run on the Q8_0 files even before it lists gguf-q8_0, so
    that validate shows how far its logits are from the reference's (or why it refuses them)."""
    return case.fmt == "gguf-q8_0" and port.manifest.role == "peer" and port.reads("gguf")


# ---------------------------------------------------------------- the rows as a file
ROWS_FORMAT = "polyllama-validation"
ROWS_VERSION = 1


def rows_json(rows: list[Row]) -> str:
    """`invoke validate --out`'s file: the rows as the result schema's ValidationRow, under a
    format tag that says what the file is (the report's --validation reads it)."""
    return json.dumps({"format": ROWS_FORMAT, "version": ROWS_VERSION,
                       "rows": [r.record().model_dump() for r in rows]}, indent=1) + "\n"


def save_rows(rows: list[Row], path: Path) -> None:
    write_atomic(path, rows_json(rows))
