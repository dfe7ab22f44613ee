"""The result file of one benchmark suite: immutable records that keep every raw sample.

Summaries (means, deviations, relative speeds) are computed from the samples when a report is
made, never stored, so a file can always be re-analysed.

Format history:
  1 (2026-11): first version. Suite -> host + matrix + cells; cell -> warmup and measured runs;
               run -> wall/cpu time, peak RSS (KiB), threads seen, the port's statistics line,
               and the checks the harness made of it.
  2 (2026-11): the host records a roofline probe per model size and thread count, and the CPU
               governor and clock; a peer's cell records its engine's own benchmark figure; a run records the load average when it started and the CPU time the rest of the
               machine used while it ran (the quiet-machine guard); max_threads is read a few
               times per run instead of sampled every 20 ms. Version 1 files still load.
  3 (2026-11): a weight-type dimension: the matrix lists its `types` (f32, q8_0); a
               cell's model records its `weight_type`, the format gguf-q8_0 and, for q8_0, the
               Q8_0 file's bytes per token as weight_bytes (the roofline); every run records its
               weight_type too. Cells are keyed by (port, model, weight type, threads). Versions 1
               and 2 still load: their cells are f32.
  4 (2026-12): results first. A run records the SHA-256 of the text it generated, so a report can
               show that every port wrote the same tokens; the suite records the validation it ran
               before measuring (`validation`, None when it did not); a probe records how it read
               (`method`: vector width, streams, huge pages). Versions 1-3 still load.
  5 (2026-12): prompt processing. A cell records its test (`tgN`: N positions generated after BOS;
               `ppN`: an N-token prompt through the port's batched prefill) and, for pp, the FLOPs
               of one prompt position; a pp run's tok_s is its prefill rate. The host records
               compute peaks (f32 FMA, int8 dot products) beside the bandwidth probes. The
               statistics line may carry batch, prefill_s and prefill_tok_s (contract 2).
               Versions 1-4 still load: their cells are tg{steps}.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .matrix import Matrix

FORMAT_VERSION = 5
WeightType = Literal["f32", "q8_0", "f16", "bf16"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortStats(_Record):
    """The port's own statistics line (docs/port-contract.md, section 3)."""
    port: str
    prompt_tokens: int
    generated_tokens: int
    positions: int
    threads: int
    load_s: float
    ttft_s: float
    decode_s: float
    decode_tok_s: float
    # contract 2 (format 5): the batched prefill; None from a contract-1 port or an older file
    batch: int | None = None
    prefill_s: float | None = None
    prefill_tok_s: float | None = None


class Run(_Record):
    wall_s: float = Field(description="whole process, start to exit: the study's 'time per inference'")
    user_s: float
    sys_s: float
    max_rss_kib: int = Field(description="peak resident set of the process tree, KiB")
    max_threads: int = Field(description="most threads seen (read from /proc a few times per run)")
    returncode: int | None = Field(description="None when killed on timeout")
    stats: PortStats | None = None
    tok_s: float | None = Field(None, description="the cell's rate, computed by the harness: a tg cell's "
                                                  "(generated_tokens - 1) / decode_s, a pp cell's positions / prefill_s")
    thread_check: Literal["ok", "over", "under", "unchecked"] = "unchecked"
    problem: str = Field("", description="why this run does not count; empty when it does")
    others_cpu_s: float | None = Field(None, description="CPU seconds other processes used during the run")
    busy: bool = Field(False, description="taken while other processes used the CPU (the matrix's busy_share)")
    load_avg: float | None = Field(None, description="1-minute load average when the run started")
    weight_type: WeightType = Field("f32", description="the weights the run read: f32, or q8_0 (GGUF Q8_0)")
    text_sha256: str | None = Field(None, description="SHA-256 of the text the port printed (format 4)")

    @property
    def ok(self) -> bool:
        return not self.problem


class Model(_Record):
    name: str
    path: str
    origin: Literal["real", "synthetic", "unverified"]
    tokenizer_origin: Literal["real", "synthetic", "unverified"] | None
    format: Literal["v0", "v1", "gguf", "gguf-q8_0", "gguf-f16", "gguf-bf16"]
    weight_type: WeightType = Field("f32", description="f32, or q8_0: the Q8_0 GGUF export (format 3)")
    weight_bytes: int = Field(description="bytes a batch-1 decode step reads: every weight once, as stored in "
                                          "the file (4 per f32 weight; 34 per block of 32 for q8_0)")

    @property
    def label(self) -> str:
        """The model's name in tables and figures, with the weight type when it is not f32."""
        return self.name if self.weight_type == "f32" else f"{self.name} {self.weight_type}"


class PeerCheck(_Record):
    """The peer engine's own benchmark tool on the same file and thread count as its row."""
    command: list[str]
    tool_tok_s: float | None = Field(description="what the engine's own tool reports; None if it failed")
    row_tok_s: float | None = Field(description="the row's mean decode rate over its good runs")
    tolerance: float
    problem: str = ""

    @property
    def agrees(self) -> bool:
        if not self.tool_tok_s or not self.row_tok_s:
            return False
        return abs(self.row_tok_s / self.tool_tok_s - 1) <= self.tolerance


class Cell(_Record):
    port: str
    language: str
    role: Literal["port", "reference", "peer"]
    model: Model
    threads: int
    steps: int
    argv: list[str]
    warmup: list[Run] = Field(default_factory=list)
    runs: list[Run] = Field(default_factory=list)
    status: Literal["ok", "failed", "incomplete"] = Field(description="incomplete: interrupted; --resume runs it again")
    reason: str = ""
    peer_check: PeerCheck | None = None
    test: str = Field("", description="tgN or ppN (format 5); empty in older files, whose cells are tg{steps}")
    flops_per_token: float | None = Field(None, description="pp cells: the FLOPs of one prompt position (its "
                                                            "matrix products and attention), for the compute roof")

    @property
    def test_name(self) -> str:
        return self.test or f"tg{self.steps}"

    @property
    def prefill(self) -> bool:
        """A prompt-processing cell: its rate is the batched prefill's."""
        return self.test_name.startswith("pp")

    @property
    def label(self) -> str:
        """The cell's group in tables and figures: the model, and the test when it is a pp one."""
        return f"{self.model.label} {self.test_name}" if self.prefill else self.model.label

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        """What identifies a cell in its suite: (port, model, weight type, threads, test)."""
        return self.port, self.model.name, self.model.weight_type, self.threads, self.test_name


class PortInfo(_Record):
    name: str
    language: str
    role: Literal["port", "reference", "peer"]
    toolchain: str | None
    build_flags: str
    build: str = Field(description="built, skipped or failed, with the reason")


class Probe(_Record):
    bytes: int = Field(description="bytes streamed per pass: one model's weights")
    threads: int
    streams: int = Field(description="rows each thread reads at once, as a blocked matvec does")
    gbs: float = Field(description="best pass, GB/s (1e9 bytes)")
    method: str = Field("", description="how the probe read: vector width, streams, page size (format 4)")


class PeakProbe(_Record):
    """The compute roof of a batched prefill (format 5): the fastest rate at which the host's
    cores issue the instruction a matrix kernel is made of."""
    kind: Literal["f32", "int8"] = Field(description="f32: fused multiply-adds; int8: 8-bit dot products")
    threads: int
    gops: float = Field(description="G operations per second (1e9): 2 per multiply-add")
    method: str = Field("", description="the instruction and how many independent chains")


class Host(_Record):
    hostname: str
    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    caches: dict[str, str]
    memory_bytes: int
    os: str
    python: str
    git_commit: str
    git_dirty: bool
    bandwidth_gbs: dict[int, float] = Field(description="read bandwidth by thread count, GB/s (1e9 bytes), best of "
                                                        "several, over the largest model's bytes")
    bandwidth_probe_mib: int = Field(description="MiB the bandwidth probe streams for bandwidth_gbs")
    probes: list[Probe] = Field(default_factory=list, description="the roofline of each model size (format 2)")
    peaks: list[PeakProbe] = Field(default_factory=list, description="compute peaks, for prompt-processing cells "
                                                                    "(format 5)")
    cpu_governor: str | None = None
    cpu_mhz: float | None = Field(None, description="current clock of cpu0 when the suite started, where exposed")
    container_image: str | None = None

    def peak_for(self, kind: str, threads: int) -> float | None:
        """G ops/s of that kind at this thread count; None when it was not measured."""
        return next((p.gops for p in self.peaks if p.kind == kind and p.threads == threads), None)

    def bandwidth_for(self, weight_bytes: int, threads: int) -> float | None:
        """GB/s measured over this many bytes at this thread count (the largest probe when none was)."""
        for p in self.probes:
            if p.bytes == weight_bytes and p.threads == threads:
                return p.gbs
        return self.bandwidth_gbs.get(threads)


class ValidationRow(_Record):
    """One case of `invoke validate`: a port against the reference core on one model file."""
    port: str
    case: str
    ok: bool
    max_abs_diff: float | None = None
    tolerance: float | None = None
    argmax_agree: str = "-"
    greedy_identical: str = "-"
    sampled_identical: str = "-"
    problem: str = ""
    note: str = ""
    report_only: bool = False


class Suite(_Record):
    format_version: Literal[1, 2, 3, 4, 5] = FORMAT_VERSION
    suite_id: str
    started: str
    finished: str | None = None
    matrix_name: str
    matrix: Matrix
    host: Host
    ports: list[PortInfo]
    cells: list[Cell] = Field(default_factory=list)
    validation: list[ValidationRow] | None = Field(None, description="the validation run before measuring "
                                                                    "(format 4); None when it was not run")
