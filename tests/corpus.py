"""A corpus of broken model and tokenizer files, made from a small valid model.

Used against the Python readers and, through the command line, against every built port:
each case must give exit 3 and one `error:` line, quickly, without a crash.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.formats import Config, write_gguf, write_tokenizer, write_v0, write_v1
from orchestrator.models.synth import random_model, random_vocab

BASE = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=32)


@dataclass(frozen=True)
class BadCase:
    name: str
    checkpoint: Path
    tokenizer: Path | None


def _v0_header(dim=32, hidden=48, layers=2, heads=4, kv=2, vocab=300, seq=32) -> bytes:
    return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)


# ---------------------------------------------------------------- raw GGUF, for crafted files
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _value_size(data: bytes, off: int, vtype: int) -> int:
    if vtype in _FIXED:
        return _FIXED[vtype]
    if vtype == 8:
        return 8 + struct.unpack_from("<Q", data, off)[0]
    etype, count = struct.unpack_from("<IQ", data, off)
    size, pos = 12, off + 12
    for _ in range(count):
        n = _value_size(data, pos, etype)
        size, pos = size + n, pos + n
    return size


def _gstr(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


@dataclass
class RawGGUF:
    """A GGUF file as lists that a test can change: kv entries (key, type, raw value bytes) and
    tensor infos (name, dims, type, offset), the data blob, and the alignment."""
    version: int
    kvs: list
    tensors: list
    data: bytes
    alignment: int = 32

    @classmethod
    def parse(cls, blob: bytes) -> "RawGGUF":
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
        off, kvs, tensors = 24, [], []
        for _ in range(n_kv):
            n = struct.unpack_from("<Q", blob, off)[0]
            key = blob[off + 8:off + 8 + n].decode()
            off += 8 + n
            vtype = struct.unpack_from("<I", blob, off)[0]
            size = _value_size(blob, off + 4, vtype)
            kvs.append((key, vtype, blob[off + 4:off + 4 + size]))
            off += 4 + size
        for _ in range(n_tensors):
            n = struct.unpack_from("<Q", blob, off)[0]
            name = blob[off + 8:off + 8 + n].decode()
            off += 8 + n
            ndim = struct.unpack_from("<I", blob, off)[0]
            dims = list(struct.unpack_from(f"<{ndim}Q", blob, off + 4))
            off += 4 + 8 * ndim
            ttype, offset = struct.unpack_from("<IQ", blob, off)
            off += 12
            tensors.append((name, dims, ttype, offset))
        start = -(-off // 32) * 32
        return cls(version, kvs, tensors, blob[start:])

    def kv(self, key: str) -> bytes:
        return next(v for k, _, v in self.kvs if k == key)

    def dump(self) -> bytes:
        out = [b"GGUF", struct.pack("<IQQ", self.version, len(self.tensors), len(self.kvs))]
        out += [_gstr(k) + struct.pack("<I", t) + v for k, t, v in self.kvs]
        for name, dims, ttype, offset in self.tensors:
            out.append(_gstr(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset))
        head = b"".join(out)
        return head + b"\0" * (-len(head) % self.alignment) + self.data


def _with_nan_score(scores: bytes) -> bytes:
    """A tokenizer.ggml.scores array value (type, count, f32s) with its fourth score NaN."""
    return scores[:12 + 12] + struct.pack("<f", float("nan")) + scores[12 + 16:]


def _gguf_cases(gg: bytes) -> list[tuple[str, bytes]]:
    """GGUF files that llama.cpp's loader refuses, or whose tokenizer breaks the contract."""
    def variant(change) -> bytes:
        raw = RawGGUF.parse(gg)
        change(raw)
        return raw.dump()

    def rename_key(raw, old, new):
        raw.kvs = [(new if k == old else k, t, v) for k, t, v in raw.kvs]

    def shift_last(raw, by):
        name, dims, ttype, offset = raw.tensors[-1]
        raw.tensors[-1] = (name, dims, ttype, offset + by)
        raw.data += b"\0" * 64

    def overlap(raw):
        name, dims, ttype, _ = raw.tensors[2]
        raw.tensors[2] = (name, dims, ttype, raw.tensors[1][3])

    def extra_tensor(raw):
        raw.tensors.append(("extra.weight", [32], 0, len(raw.data) + (-len(raw.data) % 32)))
        raw.data += b"\0" * (-len(raw.data) % 32) + b"\0" * 128

    def no_space_piece(raw):
        tokens = raw.kv("tokenizer.ggml.tokens")
        needle = _gstr("\u2581")
        at = tokens.index(needle, 12)
        patched = tokens[:at] + _gstr("\u2582") + tokens[at + len(needle):]
        raw.kvs = [(k, t, patched if k == "tokenizer.ggml.tokens" else v) for k, t, v in raw.kvs]

    return [
        ("gguf empty key", variant(lambda r: rename_key(r, "general.name", ""))),
        ("gguf duplicate key", variant(lambda r: r.kvs.append(next(kv for kv in r.kvs if kv[0] == "llama.block_count")))),
        ("gguf duplicate tokenizer keys", variant(
            lambda r: r.kvs.append(next(kv for kv in r.kvs if kv[0] == "tokenizer.ggml.scores")))),
        ("gguf unaligned tensor offset", variant(lambda r: shift_last(r, 4))),
        ("gguf overlapping tensors", variant(overlap)),
        ("gguf extra unknown tensor", variant(extra_tensor)),
        ("gguf NaN score", variant(lambda r: setattr(r, "kvs", [
            (k, t, _with_nan_score(v) if k == "tokenizer.ggml.scores" else v) for k, t, v in r.kvs]))),
        ("gguf no space piece", variant(no_space_piece)),
    ]


Q8_0, Q8_1 = 8, 9  # ggml tensor types


def _q8_cases(gq: bytes) -> list[tuple[str, bytes]]:
    """Q8_0 files (docs/port-contract.md, "GGUF Q8_0") broken where only a reader that sizes Q8_0
    tensors by their blocks notices: the model has rows of 32 (Q8_0) and of 48 (ffn_down, F32)
    and an unshared classifier, which is the last tensor and Q8_0."""
    def variant(change) -> bytes:
        raw = RawGGUF.parse(gq)
        change(raw)
        return raw.dump()

    def retype(raw, name, ttype):
        raw.tensors = [(n, d, ttype if n == name else t, o) for n, d, t, o in raw.tensors]

    def next_inside_blocks(raw):
        # token_embd is 300 rows of one block: 10200 bytes, 9600 if each value were a byte;
        # the tensor after it is moved to 9600, inside its blocks (the gap it leaves is allowed)
        i = next(k for k, t in enumerate(raw.tensors) if t[0] == "token_embd.weight")
        name, dims, ttype, offset = raw.tensors[i]
        assert ttype == Q8_0 and dims == [32, 300]
        after = raw.tensors[i + 1]
        raw.tensors[i + 1] = (after[0], after[1], after[2], offset + 32 * 300)

    return [
        ("gguf q8_0 rows not a multiple of 32", variant(lambda r: retype(r, "blk.0.ffn_down.weight", Q8_0))),
        ("gguf q8_0 norm", variant(lambda r: retype(r, "blk.1.attn_norm.weight", Q8_0))),
        ("gguf q8_0 unsupported type Q8_1", variant(lambda r: retype(r, "blk.0.attn_k.weight", Q8_1))),
        ("gguf q8_0 tensor inside another's blocks", variant(next_inside_blocks)),
        ("gguf q8_0 truncated blocks", gq[:-17]),
        ("gguf q8_0 last block missing", gq[:-34]),
    ]


def make_corpus(out: Path) -> tuple[list[BadCase], Path, Path]:
    """(bad cases, a good v0 checkpoint, its good tokenizer). Beside them: good.gguf (the same
    weights) and good_q8.gguf (Q8_0, with an unshared classifier)."""
    out.mkdir(parents=True, exist_ok=True)
    model, vocab = random_model(BASE, 3), random_vocab(BASE.vocab_size, 3)
    good, tok = out / "good.bin", out / "good_tok.bin"
    write_v0(good, model)
    write_tokenizer(tok, vocab)
    write_v1(out / "good_v1.bin", model)
    write_gguf(out / "good.gguf", model, vocab)
    write_gguf(out / "good_q8.gguf", random_model(replace(BASE, shared_classifier=False), 3).quantized(), vocab)
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
        *((name, data, None) for name, data in _gguf_cases(gg)),
        *((name, data, None) for name, data in _q8_cases((out / "good_q8.gguf").read_bytes())),
        ("tokenizer too small", None, "small"),
        ("tokenizer NaN score", None, "nan"),
        ("tokenizer without a space piece", None, "no-space"),
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
        elif tokenizer == "nan":
            tokenizer = out / "tok_nan.bin"
            write_tokenizer(tokenizer, replace(vocab, scores=(*vocab.scores[:5], float("nan"), *vocab.scores[6:])))
        elif tokenizer == "no-space":
            tokenizer = out / "tok_no_space.bin"
            pieces = tuple(b"@@" if p == b" " else p for p in vocab.pieces)
            assert pieces != vocab.pieces, "the synthetic vocabulary has a space piece"
            write_tokenizer(tokenizer, replace(vocab, pieces=pieces))
        elif tokenizer == "missing":
            tokenizer = out / "no_tokenizer.bin"
        result.append(BadCase(name, ckpt, tokenizer))
    return result, good, tok


# Boundary values the contract allows (section 2): each must run (exit 0).
GOOD_FLAGS = [
    ["-n", "1099511627776"],  # above 2^31 and 2^32: clamps to seq_len
    ["-n", "99999999999999999999999999"],  # beyond 64 bits too
    ["-s", "18446744073709551615"],  # 2^64 - 1
    ["-j", "2"],
]

BAD_FLAGS = [
    ["-j", "4097"],
    ["-s", "18446744073709551616"],
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

# Contract 2's prompt batch (section 2): the same rules for a port that takes -b
GOOD_BATCH_FLAGS = [
    ["-b", "1", "-i", "Once upon a time"],
    ["-b", "3", "-i", "Once upon a time"],  # a ragged last batch
    ["-b", "99999999999999999999999999"],  # clamps to seq_len
]
BAD_BATCH_FLAGS = [["-b", "0"], ["-b", "-1"], ["-b", "x"], ["-b", "1.5"], ["-b"]]
