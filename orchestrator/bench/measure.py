"""One measured run of one cell, and the checks that decide whether it counts.

The harness never trusts a port's printout alone: the statistics line must parse, the token
counts must be the ones asked for, its times must fit inside the process's own lifetime, and its
CPU use must match the thread count it was given.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.results import Model, PortStats, Run

from ..ports.discover import Port, tool_env
from ..process import ProcResult, execute
from .modelfiles import FORMAT_OF, file_for, model_record

RATE_TOLERANCE = 0.02  # reported vs recomputed tok/s
CLOCK_SLACK_S = 0.02  # a port's clock and ours start at different instants
THREAD_CHECK_MIN_WALL_S = 0.3  # below this, CPU-time ratios are mostly start-up noise
BUSY_FLOOR_S = 0.05  # /proc/stat counts in clock ticks: below this, "others" is rounding


@dataclass(frozen=True)
class CellSpec:
    port: Port
    model: Model
    tokenizer: str | None
    threads: int
    steps: int
    temperature: float
    topp: float
    seed: int
    prompt: str = ""  # a pp cell's: text of exactly `steps` tokens (bench/prompts.py)
    prefill: bool = False  # a pp cell: the rate is the prefill's, one token is sampled

    @classmethod
    def greedy(cls, port: Port, resolved, threads: int, steps: int, weight_type: str = "f32") -> "CellSpec":
        """The checks' cell (overhead, lever, container parity): greedy on the model's v0 file, or
        on its Q8_0 GGUF export for weight_type q8_0."""
        fmt = FORMAT_OF.get(weight_type, "v0")
        return cls(port, model_record(resolved, file_for(resolved, fmt), fmt, weight_type), str(resolved.tokenizer),
                   threads, min(steps, resolved.config.seq_len), 0.0, 0.9, 42)

    def argv(self) -> list[str]:
        argv = self.port.run_argv() + [self.model.path]
        if self.tokenizer is not None and not self.model.format.startswith("gguf"):  # GGUF embeds its own
            argv += ["-z", self.tokenizer]
        # -e 1: every port runs exactly `steps` positions, whatever text it generates; a pp cell's
        # prompt fills them all, so its one sampled token ends the run
        return argv + ["-t", str(self.temperature), "-p", str(self.topp), "-s", str(self.seed),
                       "-n", str(self.steps), "-j", str(self.threads), "-e", "1", "-i", self.prompt]


def _thread_check(proc: ProcResult, stats: PortStats, threads: int) -> str:
    if proc.wall_s < THREAD_CHECK_MIN_WALL_S:
        return "unchecked"
    util = proc.cpu_s / proc.wall_s
    if util > threads + 0.5:
        return "over"
    decode_share = max(stats.decode_s, stats.prefill_s or 0.0) / proc.wall_s
    if threads > 1 and decode_share > 0.5 and (util < 1.15 or (proc.max_threads and proc.max_threads < threads)):
        return "under"
    return "ok"


def text_hash(proc: ProcResult) -> str | None:
    """SHA-256 of what the port printed on stdout (the generated text), so that a report can show
    that every port of a block wrote the same tokens; None for a process killed on its timeout,
    whose output stops wherever it was cut."""
    return None if proc.timed_out else hashlib.sha256(proc.stdout).hexdigest()


def check(proc: ProcResult, spec: CellSpec, busy_share: float = 0.10) -> Run:
    busy = proc.others_cpu_s is not None and proc.others_cpu_s > BUSY_FLOOR_S + busy_share * proc.wall_s
    base = dict(wall_s=proc.wall_s, user_s=proc.user_s, sys_s=proc.sys_s, max_rss_kib=proc.max_rss_kib,
                max_threads=proc.max_threads, returncode=proc.returncode, others_cpu_s=proc.others_cpu_s,
                load_avg=proc.load_avg, busy=busy, weight_type=spec.model.weight_type,
                text_sha256=text_hash(proc))
    if proc.timed_out:
        return Run(**base, problem=f"timed out after {proc.wall_s:.0f} s")
    if proc.returncode != 0:
        return Run(**base, problem=f"exit {proc.returncode}: {proc.error_line or 'no error message'}")
    if proc.stats is None:
        return Run(**base, problem=proc.stats_error)
    try:
        stats = PortStats(**proc.stats)
    except (ValidationError, TypeError) as e:
        detail = e.errors()[0] if isinstance(e, ValidationError) else {"loc": ["?"], "msg": str(e)}
        return Run(**base, problem=f"statistics line: {'.'.join(map(str, detail['loc']))}: {detail['msg']}")
    base["stats"] = stats
    expected_generated = spec.steps - stats.prompt_tokens + 1
    if stats.positions != spec.steps or stats.generated_tokens != expected_generated:
        return Run(**base, problem=f"ran {stats.positions} positions and generated {stats.generated_tokens} "
                                   f"tokens; asked for {spec.steps} and {expected_generated}")
    if stats.threads != spec.threads:
        return Run(**base, problem=f"reports {stats.threads} threads, was asked for {spec.threads}")
    if spec.prefill:
        return _check_prefill(proc, spec, stats, base)
    if stats.decode_s <= 0 or min(stats.load_s, stats.ttft_s) < 0:
        return Run(**base, problem="non-positive times in the statistics line")
    reported_total = stats.load_s + stats.ttft_s + stats.decode_s
    if reported_total > proc.wall_s + CLOCK_SLACK_S:
        return Run(**base, problem=f"reports {reported_total:.3f} s of work in a process that lived {proc.wall_s:.3f} s")
    tok_s = (stats.generated_tokens - 1) / stats.decode_s
    base["tok_s"] = tok_s
    if abs(stats.decode_tok_s - tok_s) > RATE_TOLERANCE * tok_s:
        return Run(**base, problem=f"reports {stats.decode_tok_s:.1f} tok/s, its own counts and times give {tok_s:.1f}")
    return Run(**base, thread_check=_thread_check(proc, stats, spec.threads))


def _check_prefill(proc: ProcResult, spec: CellSpec, stats: PortStats, base: dict) -> Run:
    """A pp cell: the whole prompt went through the prefill, whose time must fit in the run."""
    if stats.prefill_s is None or stats.prefill_tok_s is None:
        return Run(**base, problem="no prefill_s in the statistics line (a contract-1 port has no batched prefill)")
    if stats.prompt_tokens != spec.steps:
        return Run(**base, problem=f"encoded the prompt to {stats.prompt_tokens} tokens, expected {spec.steps}")
    if stats.prefill_s <= 0 or min(stats.load_s, stats.ttft_s) < 0 or stats.prefill_s > stats.ttft_s + CLOCK_SLACK_S:
        return Run(**base, problem=f"prefill_s {stats.prefill_s} does not fit in ttft_s {stats.ttft_s}")
    if stats.load_s + stats.ttft_s > proc.wall_s + CLOCK_SLACK_S:
        return Run(**base, problem=f"reports {stats.load_s + stats.ttft_s:.3f} s of work in a process that lived "
                                   f"{proc.wall_s:.3f} s")
    tok_s = spec.steps / stats.prefill_s
    base["tok_s"] = tok_s
    if abs(stats.prefill_tok_s - tok_s) > RATE_TOLERANCE * tok_s:
        return Run(**base, problem=f"reports {stats.prefill_tok_s:.1f} prompt tok/s, its own counts and times "
                                   f"give {tok_s:.1f}")
    return Run(**base, thread_check=_thread_check(proc, stats, spec.threads))


def measure(spec: CellSpec, timeout: float, runner=None, busy_share: float = 0.10) -> Run:
    """Run the cell's command once (natively, or through `runner`, e.g. a container) and check it."""
    proc = runner(spec, timeout) if runner else execute(spec.argv(), cwd=spec.port.dir, env=tool_env(),
                                                        timeout=timeout, tree=spec.port.manifest.run.spawns)
    return check(proc, spec, busy_share)
