"""Conversions between llama2.c .bin (v0, v1) and GGUF, tokenizer included."""
from __future__ import annotations

from pathlib import Path

from .formats import read_model, read_tokenizer, write_gguf, write_tokenizer, write_v0, write_v1
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


def gguf_for(resolved: Resolved, out_dir: Path = MODELS_DIR) -> Path:
    """The GGUF export of a resolved model, made once and reused while newer than its sources."""
    out = out_dir / (resolved.path.stem + ".gguf")
    sources = [resolved.path, resolved.tokenizer]
    if not out.exists() or any(s.stat().st_mtime > out.stat().st_mtime for s in sources):
        out_dir.mkdir(parents=True, exist_ok=True)
        bin_to_gguf(resolved.path, resolved.tokenizer, out)
    return out
