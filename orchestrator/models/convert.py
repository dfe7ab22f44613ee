"""Conversions between llama2.c .bin (v0, v1) and GGUF (F32, Q8_0, F16 or BF16), tokenizer included."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PolyllamaError
from ..formats import WEIGHT_TYPES, read_model, read_tokenizer, write_gguf, write_tokenizer, write_v0, write_v1
from .store import MODELS_DIR, Resolved


def to_gguf(checkpoint: Path, out: Path, tokenizer: Path | None = None, weight_type: str = "f32") -> Path:
    """Any checkpoint (.bin with its tokenizer, or a GGUF) as a GGUF of the given weight type: f32,
    q8_0 (every matrix whose rows are a multiple of 32 long in Q8_0, the rest F32), or f16 / bf16
    (every matrix in that type, norms F32), as llama.cpp's converter writes them."""
    if weight_type not in WEIGHT_TYPES:
        raise PolyllamaError(f"unknown weight type {weight_type!r}; known: {', '.join(WEIGHT_TYPES)}")
    model = read_model(checkpoint)
    if tokenizer is not None:
        vocab = read_tokenizer(tokenizer, model.config.vocab_size)
    elif model.tokenizer is not None:
        vocab = model.tokenizer
    else:
        raise PolyllamaError(f"converting {checkpoint} to GGUF needs its tokenizer (--tokenizer)")
    model = model.as_type(weight_type)
    write_gguf(out, model, vocab, name=Path(checkpoint).stem)
    return out


def bin_to_gguf(checkpoint: Path, tokenizer: Path, out: Path, weight_type: str = "f32") -> Path:
    return to_gguf(checkpoint, out, tokenizer, weight_type)


def gguf_to_bin(gguf: Path, out: Path, tokenizer_out: Path | None = None, version: int = 0) -> Path:
    """A Q8_0, F16 or BF16 GGUF comes out dequantized: each weight exactly the float32 value it ran
    with."""
    model = read_model(gguf)
    (write_v1 if version == 1 else write_v0)(out, model.dequantized())
    if tokenizer_out is not None:
        write_tokenizer(tokenizer_out, model.tokenizer)
    return out


def _fingerprint(paths: list[Path]) -> str:
    return json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths])


def gguf_for(resolved: Resolved, out_dir: Path = MODELS_DIR, type: str = "f32") -> Path:
    """The GGUF export of a resolved model in a weight type (f32, q8_0, f16, bf16), made once and reused
    while made from the same files.

    A sidecar records which checkpoint and tokenizer it was made from: a newer file is not
    enough, since the store may resolve a different tokenizer (real instead of synthetic)."""
    # the tokenizer is part of the name: the same weights with a real and with a synthetic
    # tokenizer are two different files, also for two validations running at once
    suffix = "" if type == "f32" else f".{type}"
    out = out_dir / f"{resolved.path.stem}.{resolved.tokenizer.stem}{suffix}.gguf"
    sidecar = out.with_name(out.name + ".sources")
    fingerprint = _fingerprint([resolved.path, resolved.tokenizer])
    if not out.exists() or not sidecar.exists() or sidecar.read_text() != fingerprint:
        out_dir.mkdir(parents=True, exist_ok=True)
        to_gguf(resolved.path, out, resolved.tokenizer, type)
        sidecar.write_text(fingerprint)
    return out
