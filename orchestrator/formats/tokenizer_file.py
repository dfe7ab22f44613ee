"""llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes.

The file does not store its vocabulary size; the model does. Reading therefore takes the
model's size and insists that the file holds exactly that many tokens.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, opening
from ..files import write_atomic

MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True)
class Vocab:
    pieces: tuple[bytes, ...]
    scores: tuple[float, ...]
    max_token_length: int

    def __len__(self) -> int:
        return len(self.pieces)


def read_tokenizer(path, vocab_size: int) -> Vocab:
    with opening(path), open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            raise FormatError(path, "truncated: no max_token_length header")
        (max_len,) = struct.unpack("<i", head)
        if not 1 <= max_len <= MAX_TOKEN_LENGTH:
            raise FormatError(path, f"max_token_length={max_len} outside 1..{MAX_TOKEN_LENGTH}")
        # no more than the largest file this vocabulary can make is ever read
        limit = 4 + vocab_size * (8 + max_len)
        if os.fstat(f.fileno()).st_size > limit:
            raise FormatError(path, f"is larger than {vocab_size} tokens of at most {max_len} bytes can be: "
                                    f"its vocabulary is larger than the model's")
        data = head + f.read()
    pieces, scores, off = [], [], 4
    for i in range(vocab_size):
        if off + 8 > len(data):
            raise FormatError(path, f"has only {i} tokens, the model's vocabulary is {vocab_size}")
        score, length = struct.unpack_from("<fi", data, off)
        off += 8
        if not 0 <= length <= max_len:
            raise FormatError(path, f"token {i} has length {length}, outside 0..{max_len}")
        if off + length > len(data):
            raise FormatError(path, f"truncated inside token {i}")
        pieces.append(data[off:off + length])
        scores.append(score)
        off += length
    if off != len(data):
        raise FormatError(path, f"has {len(data) - off} bytes after token {vocab_size - 1}: "
                                f"its vocabulary is larger than the model's {vocab_size}")
    return check_vocab(path, Vocab(tuple(pieces), tuple(scores), max_len))


def check_vocab(path, vocab: Vocab) -> Vocab:
    """One rule for tokenizer.bin and GGUF (contract section 4): encode needs the 256 byte tokens
    for its fallback and the " " piece for its dummy prefix, and merges compare finite scores."""
    if len(vocab) < 259:
        raise FormatError(path, f"a vocabulary of {len(vocab)} tokens has no room for the 256 byte tokens")
    if b" " not in vocab.pieces:
        raise FormatError(path, "the vocabulary has no ' ' piece for the dummy prefix")
    for i, score in enumerate(vocab.scores):
        if not math.isfinite(score):
            raise FormatError(path, f"token {i} has a non-finite score ({score})")
    return vocab


def write_tokenizer(path, vocab: Vocab) -> None:
    max_len = max(vocab.max_token_length, max((len(p) for p in vocab.pieces), default=1))
    out = [struct.pack("<i", max_len)]
    for piece, score in zip(vocab.pieces, vocab.scores):
        out.append(struct.pack("<fi", score, len(piece)))
        out.append(piece)
    path = Path(path)
    write_atomic(path, b"".join(out))
