"""Conversions between llama2.c .bin (v0, v1) and GGUF, tokenizer included."""
from __future__ import annotations

import json
from pathlib import Path

from ..formats import read_model, read_tokenizer, write_gguf, write_tokenizer, write_v0, write_v1
from .store import MODELS_DIR, Resolved


def bin_to_gguf(checkpoint: Path, tokenizer: Path, out: Path) -> Path:
    model = read_model(checkpoint)
    write_gguf(out, model, read_tokenizer(tokenizer, model.config.vocab_size), name=Path(checkpoint).stem)
    return out


def gguf_to_bin(gguf: Path, out: Path, tokenizer_out: Path | None = None, version: int = 0) -> Path:
    model = read_model(gguf)
    (write_v1 if version == 1 else write_v0)(out, model)
    if tokenizer_out is not None:
        write_tokenizer(tokenizer_out, model.tokenizer)
    return out


def _fingerprint(paths: list[Path]) -> str:
    return json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths])


def gguf_for(resolved: Resolved, out_dir: Path = MODELS_DIR) -> Path:
    """The GGUF export of a resolved model, made once and reused while made from the same files.

    A sidecar records which checkpoint and tokenizer it was made from: a newer file is not
    enough, since the store may resolve a different tokenizer (real instead of synthetic)."""
    # the tokenizer is part of the name: the same weights with a real and with a synthetic
    # tokenizer are two different files, also for two validations running at once
    out = out_dir / f"{resolved.path.stem}.{resolved.tokenizer.stem}.gguf"
    sidecar = out.with_name(out.name + ".sources")
    fingerprint = _fingerprint([resolved.path, resolved.tokenizer])
    if not out.exists() or not sidecar.exists() or sidecar.read_text() != fingerprint:
        out_dir.mkdir(parents=True, exist_ok=True)
        bin_to_gguf(resolved.path, resolved.tokenizer, out)
        sidecar.write_text(fingerprint)
    return out
