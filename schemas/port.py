"""`impls/<name>/port.toml`, the manifest of docs/port-contract.md section 1."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONTRACT_VERSION = 1
Argv = list[str]
Arch = Literal["arm64"]  # architectures a port may be cross-built for ([cross.<arch>])
ARCHES: tuple[str, ...] = get_args(Arch)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toolchain(_Strict):
    check: Argv = Field(min_length=1, description="argv; exit 0 = present, first output line = version")
    install: Argv | None = Field(None, description="idempotent installer, run when the check fails")
    size: str = Field("", description="what the installer downloads, said before it starts (e.g. 'about 4 GB')")
    pin: str = Field("", description="the toolchain version the installer installs and the check requires ({pin} "
                                     "in argv); native builds and every Dockerfile stage use it, so both measure "
                                     "the same compiler")


class Build(_Strict):
    commands: list[Argv] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)


class Run(_Strict):
    command: Argv = Field(min_length=1)
    spawns: bool = Field(False, description="the port starts child processes: the harness then samples the "
                                            "process tree for its peak memory (a cost the others do not pay)")


class Test(_Strict):
    commands: list[Argv] = Field(default_factory=list)


class Cross(_Strict):
    """A build for another CPU architecture (`[cross.arm64]`), made here with a cross toolchain and
    run here under an emulator, so that code paths of that architecture (NEON) are validated on a
    machine without it. Optional; `invoke build-all --arch arm64` and `invoke validate --arch arm64`."""
    check: Argv = Field(min_length=1, description="argv; exit 0 = the cross toolchain (compiler, target library, "
                                                  "emulated runtime) is present; first output line = its version")
    commands: list[Argv] = Field(min_length=1, description="argv lists run in order in the port folder; they "
                                                           "build into a folder of their own (e.g. build/arm64/)")
    outputs: list[str] = Field(min_length=1, description="paths that must exist after the build; every ELF "
                                                         "file among them must be for the architecture")
    run: Argv = Field(min_length=1, description="argv prefix that runs the cross build on this machine: the "
                                                "emulator, then what [run] command would be there")
    build_flags: str = Field("", description="the cross build's flags, as [build_flags] says the native ones")


class PeerCheck(_Strict):
    """A peer engine's own benchmark tool, run on the same file and thread count as the peer's
    row, so a reader can see the row measures the engine at its best (the orchestrator's check)."""
    command: Argv = Field(min_length=1, description="argv of a tg cell's check; {model}, {threads} and {steps} are expanded")
    prompt_command: Argv | None = Field(None, description="argv of a pp cell's check (prompt processing); {model}, "
                                                          "{threads} and {steps} (the prompt's tokens) are expanded")
    tok_s: str = Field(description="JSON path of tokens per second in its stdout, e.g. '0.avg_ts'")
    tolerance: float = Field(0.10, gt=0, lt=1, description="how far the row may be from the tool's figure")


class PortManifest(_Strict):
    contract: Literal[1, 2, 3] = Field(description="the port contract version this port follows; 2 takes -b (a batched prefill), 3 reads the GGUF keys, F16/BF16 and sizes the KV cache for the run")
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    language: str = Field(min_length=1)
    role: Literal["port", "reference", "peer"] = "port"
    description: str = ""
    formats: list[Literal["v0", "v1", "gguf", "gguf-q8_0", "gguf-f16", "gguf-bf16"]] = Field(
        min_length=1, description="checkpoint formats it reads; gguf-q8_0, gguf-f16, gguf-bf16 = GGUF with Q8_0, F16 or BF16 tensors (contract section 4)")
    build_flags: str = ""
    toolchain: Toolchain
    build: Build = Build()
    run: Run
    test: Test = Test()
    peer_check: PeerCheck | None = None
    cross: dict[Arch, Cross] = Field(default_factory=dict,
                                                 description="builds for other architectures, by architecture")
    cross_skip: dict[Arch, str] = Field(default_factory=dict,
                                                    description="why there is no build for an architecture, "
                                                                "said when `--arch` skips the port")

    @model_validator(mode="after")
    def _cross_or_skip(self):
        both = sorted(set(self.cross) & set(self.cross_skip))
        if both:
            raise ValueError(f"{', '.join(both)}: in both [cross] and [cross_skip]")
        return self

    @field_validator("formats")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("formats must not repeat")
        return v
