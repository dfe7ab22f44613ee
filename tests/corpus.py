"""A corpus of broken model and tokenizer files, made from a small valid model.

Used against the Python readers and, through the command line, against every built port:
each case must give exit 3 and one `error:` line, quickly, without a crash.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from orchestrator.formats import Config, write_gguf, write_tokenizer, write_v0, write_v1
from orchestrator.synth import random_model, random_vocab

BASE = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=32)


@dataclass(frozen=True)
class BadCase:
    name: str
    checkpoint: Path
    tokenizer: Path | None


def _v0_header(dim=32, hidden=48, layers=2, heads=4, kv=2, vocab=300, seq=32) -> bytes:
    return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)


def make_corpus(out: Path) -> tuple[list[BadCase], Path, Path]:
    """(bad cases, a good v0 checkpoint, its good tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    model, vocab = random_model(BASE, 3), random_vocab(BASE.vocab_size, 3)
    good, tok = out / "good.bin", out / "good_tok.bin"
    write_v0(good, model)
    write_tokenizer(tok, vocab)
    write_v1(out / "good_v1.bin", model)
    write_gguf(out / "good.gguf", model, vocab)
    body = good.read_bytes()[28:]
    v1 = (out / "good_v1.bin").read_bytes()
    gg = (out / "good.gguf").read_bytes()
    cases: list[tuple[str, bytes | None, Path | None]] = [
        ("empty file", b"", tok),
        ("short header", body[:10], tok),
        ("truncated v0", good.read_bytes()[:-4], tok),
        ("oversized v0", good.read_bytes() + b"\0" * 64, tok),
        ("garbage", bytes(range(256)) * 40, tok),
        ("zero dim", _v0_header(dim=0) + body, tok),
        ("negative layers", _v0_header(layers=-2) + body, tok),
        ("dim not multiple of heads", _v0_header(heads=5) + body, tok),
        ("kv heads above heads", _v0_header(kv=8) + body, tok),
        ("seq_len in the billions", _v0_header(seq=2_000_000_000) + body, tok),
        ("overflowing product", _v0_header(dim=65536, hidden=262144, layers=1024) + body, tok),
        ("huge vocab", _v0_header(vocab=2_000_000_000) + body, tok),
        ("v1 wrong version", v1[:4] + struct.pack("<i", 2) + v1[8:], tok),
        ("v1 truncated", v1[:-8], tok),
        ("v1 bad shared flag", v1[:36] + b"\x07" + v1[37:], tok),
        ("gguf truncated", gg[: len(gg) // 2], None),
        ("gguf header only", gg[:24], None),
        ("gguf wrong version", gg[:4] + struct.pack("<I", 99) + gg[8:], None),
        ("gguf absurd tensor count", gg[:8] + struct.pack("<Q", 1 << 60) + gg[16:], None),
        ("gguf absurd kv count", gg[:16] + struct.pack("<Q", 1 << 60) + gg[24:], None),
        ("gguf garbage after magic", b"GGUF" + bytes(range(256)) * 8, None),
        ("tokenizer too small", None, "small"),
        ("tokenizer too large", None, "large"),
        ("tokenizer garbage", None, "garbage"),
        ("missing checkpoint", None, tok),
        ("missing tokenizer", None, "missing"),
    ]
    result = []
    for name, data, tokenizer in cases:
        slug = name.replace(" ", "_")
        ckpt = out / f"{slug}.bin"
        if data is not None:
            ckpt.write_bytes(data)
        elif name == "missing checkpoint":
            ckpt = out / "does_not_exist.bin"
        else:
            ckpt = good
        if tokenizer == "small":
            tokenizer = out / "tok_small.bin"
            write_tokenizer(tokenizer, random_vocab(299, 3))
        elif tokenizer == "large":
            tokenizer = out / "tok_large.bin"
            write_tokenizer(tokenizer, random_vocab(400, 3))
        elif tokenizer == "garbage":
            tokenizer = out / "tok_garbage.bin"
            tokenizer.write_bytes(struct.pack("<i", 7) + b"\xff" * 100)
        elif tokenizer == "missing":
            tokenizer = out / "no_tokenizer.bin"
        result.append(BadCase(name, ckpt, tokenizer))
    return result, good, tok


BAD_FLAGS = [
    ["-t", "inf"],
    ["-t", "nan"],
    ["-t", "1e999"],
    ["-n", "1_0"],
    ["-q", "1"],
    ["-t"],
    ["-t", "abc"],
    ["-t", "-1"],
    ["-p", "2"],
    ["-n", "-3"],
    ["-j", "0"],
    ["-j", "x"],
    ["-s", "seed"],
    ["-m", "chat"],
    ["-e", "5"],
    ["-m", "logits"],
]
