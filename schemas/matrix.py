"""Benchmark matrices: which ports, models and thread counts, and how each cell is measured."""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    ports: list[str] | None = Field(None, description="port names; None = every discovered port")
    models: list[str] = Field(min_length=1, description="model names from models/manifest.toml, or 'store' for all")
    threads: list[int | Literal["all", "sweep"]] = Field(
        min_length=1, description="thread counts; 'all' = every core; 'sweep' = 1, 2, 4, ... up to every core")
    runs: int = Field(5, ge=1, le=1000, description="measured runs per cell")
    warmup: int = Field(1, ge=0, le=100, description="unmeasured runs per cell before the measured ones")
    steps: int = Field(256, ge=2, le=65536, description="positions per run (the prompt is empty: BOS only)")
    tests: list[str] | None = Field(None, description="llama-bench's tests: tgN generates N tokens after BOS (N "
                                    "positions), ppN reads an N-token prompt (BOS included) through the batched "
                                    "prefill and samples one token, capped at each model's context; None = "
                                    "[tg{steps}]")
    temperature: float = Field(0.0, ge=0.0)
    topp: float = Field(0.9, ge=0.0, le=1.0)
    seed: int = Field(42, ge=1)
    timeout_s: float = Field(600, gt=0, description="per run; a run past it is killed and the cell fails")
    busy_share: float = Field(0.10, gt=0, description="quiet-machine guard: a run is marked busy when other "
                                                      "processes used more than this share of one core (plus 0.05 s) "
                                                      "while it ran; busy runs are kept but left out of every figure")
    model_format: Literal["v0", "gguf"] = Field("v0", description="what ports are fed f32 weights in; peers that read "
                                                                 "only GGUF always get GGUF")
    types: list[Literal["f32", "q8_0", "f16", "bf16"]] = Field(["f32"], min_length=1, description="weight types: f32, and q8_0, f16, bf16 = the "
                                                "model's GGUF export in that type, run by the ports that list its "
                                                "gguf-* format")
    model_types: dict[str, list[Literal["f32", "q8_0", "f16", "bf16"]]] = Field(
        {}, description="per model, the weight types it is run in, where they are fewer than `types` (a 7B shape "
                        "in Q8_0 only: its F16 file would be 13 GB)")
    container_memory: str = Field("8g", pattern=r"^[0-9]+[kmg]$", description="memory limit of a container cell (--docker)")
    synthesize: bool = Field(True, description="make a synthetic stand-in when a model file is absent")

    @field_validator("types")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("weight types must not repeat")
        return v

    @field_validator("tests")
    @classmethod
    def _tests(cls, v):
        if v is None:
            return v
        if not v or len(set(v)) != len(v):
            raise ValueError("tests must be a non-empty list without repeats")
        for t in v:
            if not re.fullmatch(r"(tg|pp)[1-9][0-9]{0,4}", t) or int(t[2:]) > 65536 or t == "tg1":
                raise ValueError(f"test {t!r}: expected tgN (N >= 2) or ppN (N >= 1), N <= 65536")
        return v

    def types_for(self, model: str) -> list[str]:
        """The matrix's weight types this model is run in."""
        only = self.model_types.get(model)
        return [t for t in self.types if only is None or t in only]

    def test_names(self) -> list[str]:
        return self.tests or [f"tg{self.steps}"]

    @field_validator("threads")
    @classmethod
    def _positive(cls, v):
        for t in v:
            if isinstance(t, int) and t < 1:
                raise ValueError("thread counts must be >= 1 or 'all'")
        return v

    def thread_counts(self) -> list[int]:
        cores = os.cpu_count() or 1
        out = []
        for t in self.threads:
            if t == "sweep":
                counts = [1 << i for i in range(cores.bit_length()) if (1 << i) < cores] + [cores]
            else:
                counts = [cores if t == "all" else t]
            out += [n for n in counts if n not in out]
        return out
