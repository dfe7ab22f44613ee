"""Synthetic models: deterministic random weights in the exact shape of a known model.

Same header, same tensor shapes, same file size, hence the same bytes read per token as the
real file: good for speed and for cross-port checks, useless for text. Files carry
`.synthetic` in their name so that no result can mistake them for the real thing.
"""
from __future__ import annotations

import numpy as np

from ..formats import Model, Vocab, write_tokenizer, write_v0
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


def ensure(store: Store, name: str, seed: int = DEFAULT_SEED) -> Resolved:
    """The model resolved, after synthesising its file or tokenizer where neither a real nor a
    synthetic one is on the search path."""
    if store.find_model(name)[0] is None:
        synthesize_model(store, name, seed)
    tokenizer = store.entry(name).tokenizer
    if store.find_tokenizer(tokenizer)[0] is None:
        synthesize_tokenizer(store, tokenizer, seed)
    return store.resolve(name)
