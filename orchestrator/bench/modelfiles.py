"""Which model file each cell of a suite reads, and what one decode step of it costs.

A port reads f32 weights in the matrix's format (v0, or GGUF for the ports that read only GGUF);
the q8_0 weight type is the model's Q8_0 GGUF export (docs/port-contract.md, "GGUF Q8_0"), for
the ports whose port.toml lists gguf-q8_0. Bytes per token are what the roofline divides by.
"""
from __future__ import annotations

from pathlib import Path

from schemas.matrix import Matrix
from schemas.results import Model

from ..formats import read_model
from ..models.convert import gguf_for
from ..models.store import Resolved, Store
from ..models.synth import ensure_typed
from ..ports.discover import Port

# the one format a weight type other than f32 comes in
FORMAT_OF = {"q8_0": "gguf-q8_0", "f16": "gguf-f16", "bf16": "gguf-bf16"}
TYPE_OF = {f: t for t, f in FORMAT_OF.items()} | {"gguf": "f32"}


def cell_types(port: Port, matrix: Matrix, model: str | None = None) -> list[str]:
    """The matrix's weight types this port has cells for: f32 always (a port that reads none of
    its formats is a failed cell), q8_0, f16 and bf16 only when it lists their GGUF format."""
    types = matrix.types if model is None else matrix.types_for(model)
    return [t for t in types if t == "f32" or port.reads(FORMAT_OF[t])]


def format_for(port: Port, matrix: Matrix, weight_type: str = "f32", gguf_only: bool = False) -> str | None:
    if weight_type != "f32":
        return FORMAT_OF[weight_type] if port.reads(FORMAT_OF[weight_type]) else None
    if matrix.model_format == "gguf" or not port.reads("v0") or gguf_only:
        return "gguf" if port.reads("gguf") else None
    return "v0"


def file_for(r: Resolved, fmt: str, store=None) -> Path:
    """The file of that format, converted (once, then reused) when it is not the store's own; a
    GGUF-only shape's synthetic file of that weight type."""
    if r.gguf:
        return ensure_typed(store or Store(), r.name, TYPE_OF.get(fmt, "f32"))
    if fmt in TYPE_OF and fmt != "gguf":
        return gguf_for(r, type=TYPE_OF[fmt])
    return gguf_for(r) if fmt == "gguf" else r.path


def bytes_per_token(r: Resolved, weight_type: str, path: Path | None) -> int:
    """Bytes a batch-1 decode step reads: f32 from the shape; the other types from the file's own
    tensors, when one was made (no port reads it otherwise, and the converter's sizes stand in)."""
    if weight_type != "f32" and path is not None:
        return read_model(path).tensor_bytes()
    return r.config.weight_bytes(weight_type)


def model_record(resolved: Resolved, path: Path, fmt: str, weight_type: str = "f32",
                 weight_bytes: int | None = None) -> Model:
    return Model(name=resolved.name, path=str(path), origin=resolved.origin, tokenizer_origin=resolved.tokenizer_origin,
                 format=fmt, weight_type=weight_type,
                 weight_bytes=resolved.config.weight_bytes(weight_type) if weight_bytes is None else weight_bytes)


def cell_test(test: str, r: Resolved) -> tuple[str, int]:
    """(name, positions) of one of the matrix's tests on this model: a ppN test is capped at the
    model's context (the 15M shape's 256 positions make its pp512 a pp256), a tgN is not (the
    plan refuses one longer than the context)."""
    n = int(test[2:])
    if test.startswith("pp") and n > r.config.seq_len:
        n = r.config.seq_len
    return f"{test[:2]}{n}", n


def flops_per_token(config, positions: int) -> float:
    """FLOPs of one position of a `positions`-long prefill, averaged over the prompt: the layers'
    matrix products (2 per weight), causal attention (scores and the weighted sum, 2 x 2 x dim
    per cached position, (positions + 1) / 2 of them on average) and the classifier, which runs
    for the last position only. Embedding lookups, norms, RoPE and softmax are left out: they
    are not multiply-adds."""
    c = config
    per_layer = 2 * c.dim * c.dim + 2 * c.dim * c.kv_dim + 3 * c.dim * c.hidden_dim
    attention = 2 * 2 * c.dim * (positions + 1) / 2
    return c.n_layers * (2 * per_layer + attention) + 2 * c.vocab_size * c.dim / positions


# what a run needs beside its weights and cache: the process, scratch buffers, a runtime (a JVM)
RUN_OVERHEAD = 1 << 30


def memory_shortfall(path: Path, config, positions: int) -> str | None:
    """Why a cell cannot run on this machine, or None: its file (mapped or read), the KV cache for
    its positions and an allowance for the process must fit in the memory there is, else the run
    would swap or be killed instead of measuring anything."""
    import psutil
    need = path.stat().st_size + config.kv_cache_bytes(positions) + RUN_OVERHEAD if path.exists() else 0
    have = psutil.virtual_memory().total
    if need > have:
        return (f"does not fit in memory: {need / 2**30:.1f} GiB (file, KV cache for {positions} positions, "
                f"1 GiB for the process) on a machine with {have / 2**30:.1f} GiB")
    return None
