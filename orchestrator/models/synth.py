"""Synthetic models: deterministic random weights in the exact shape of a known model.

Same header, same tensor shapes, same file size, hence the same bytes read per token as the
real file: good for speed and for cross-port checks, useless for text. Files carry
`.synthetic` in their name so that no result can mistake them for the real thing.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..errors import UsageError
from ..formats import Model, Vocab, read_tokenizer, write_tokenizer, write_v0
from ..formats.gguf_file import tensor_plan, write_gguf_streamed
from ..formats.half import HalfTensor
from ..formats.q8_0 import eligible, quantize
from .store import MODELS_DIR, Resolved, Store, synthetic_name

DEFAULT_SEED = 1234
WEIGHT_STD = 0.02


def random_model(config, seed: int = DEFAULT_SEED) -> Model:
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in config.tensor_shapes().items():
        if name.startswith("rms"):
            # norms near 1, as in trained models; exactly 1 would hide a missing multiply
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        else:
            weights[name] = (WEIGHT_STD * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return Model(config, weights, "memory")


def random_vocab(vocab_size: int, seed: int = DEFAULT_SEED) -> Vocab:
    """A llama2.c-shaped vocabulary: <unk>, BOS, EOS, 256 byte tokens, then distinct merges."""
    if vocab_size < 260:
        raise ValueError("a synthetic tokenizer needs at least 260 tokens")
    rng = np.random.default_rng(seed)
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    scores = [0.0] * len(pieces)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    seen = set(pieces)
    singles = [b" "] + [bytes([c]) for c in letters]
    for s in singles:
        if len(pieces) < vocab_size:
            pieces.append(s)
            seen.add(s)
    while len(pieces) < vocab_size:
        length = int(rng.integers(2, 8))
        word = bytes(letters[int(i)] for i in rng.integers(0, 26, length))
        piece = (b" " + word) if rng.random() < 0.5 else word
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    scores = scores + [-float(i) for i in range(vocab_size - len(scores))]
    return Vocab(tuple(pieces), tuple(scores), max(len(p) for p in pieces))


def _tensor_values(seed: int, gname: str, shape, norm: bool) -> np.ndarray:
    """One tensor's random values, seeded by its name: the same whatever order they are made in."""
    rng = np.random.default_rng([seed, zlib.crc32(gname.encode())])
    if norm:
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return (WEIGHT_STD * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def _stored(values: np.ndarray, kind: str) -> bytes:
    if kind == "q8_0":
        return quantize(values).tobytes()
    if kind in ("f16", "bf16"):
        return HalfTensor.from_f32(values, kind).tobytes()
    return values.astype("<f4").tobytes()


def synthesize_gguf(store: Store, name: str, weight_type: str, seed: int = DEFAULT_SEED, out_dir=MODELS_DIR):
    """A GGUF-only shape (TinyLlama-1.1B, Llama-2-7B) as llama.cpp's converter would write it in
    one weight type: every matrix in that type (Q8_0 where its rows are a multiple of 32 long),
    norms F32, an untied output, the Llama 2 tokenizer (the real one when on the search path).
    Written a tensor at a time: a 7B model never sits in memory."""
    entry = store.entry(name)
    if not entry.gguf:
        raise UsageError(f"{name} is a llama2.c model: `invoke models.synth {name}` writes its .bin, "
                         f"`invoke models.convert` its GGUF")
    if weight_type not in ("f32", "f16", "bf16", "q8_0"):
        raise UsageError(f"--types: unknown weight type {weight_type!r}")
    c = entry.config
    tok_path, _ = store.find_tokenizer(entry.tokenizer)
    if tok_path is None:
        tok_path = synthesize_tokenizer(store, entry.tokenizer, seed, out_dir)
    vocab = read_tokenizer(tok_path, c.vocab_size)

    def kind_of(_, shape) -> str:
        if len(shape) == 1 or (weight_type == "q8_0" and not eligible(shape)):
            return "f32"
        return weight_type

    def produce(gname, shape, kind):
        return _stored(_tensor_values(seed, gname, shape, len(shape) == 1), kind)

    path = out_dir / synthetic_name(entry.file, weight_type)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_gguf_streamed(path, c, vocab, tensor_plan(c, kind_of), produce, name=f"{name} (synthetic)")
    return path


def synthesize_model(store: Store, name: str, seed: int = DEFAULT_SEED, out_dir=MODELS_DIR):
    entry = store.entry(name)
    path = out_dir / synthetic_name(entry.file)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_v0(path, random_model(entry.config, seed))
    return path


def synthesize_tokenizer(store: Store, name: str, seed: int = DEFAULT_SEED, out_dir=MODELS_DIR):
    entry = store.tokenizers[name]
    path = out_dir / synthetic_name(entry.file)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(path, random_vocab(entry.vocab_size, seed))
    return path


def ensure(store: Store, name: str, seed: int = DEFAULT_SEED, types=("f16",)) -> Resolved:
    """The model resolved, after synthesising its file or tokenizer where neither a real nor a
    synthetic one is on the search path; for a GGUF-only shape, its file of each of `types` (the
    weight types a suite reads: a 7B shape is 7 GB in Q8_0 and 13 GB in F16, so only those)."""
    if store.entry(name).gguf:
        for t in types:
            ensure_typed(store, name, t, seed)
    elif store.find_model(name)[0] is None:
        synthesize_model(store, name, seed)
    tokenizer = store.entry(name).tokenizer
    if store.find_tokenizer(tokenizer)[0] is None:
        synthesize_tokenizer(store, tokenizer, seed)
    return store.resolve(name)


def ensure_typed(store: Store, name: str, weight_type: str, seed: int = DEFAULT_SEED):
    """A GGUF-only shape's synthetic file of one weight type, made when missing."""
    return store.find_typed(name, weight_type) or synthesize_gguf(store, name, weight_type, seed)
