"""llama2.c's byte-pair tokenizer: encode with the dummy prefix and byte fallback, decode with
run.c's rules (docs/port-contract.md, section 5)."""
from __future__ import annotations

import re

from ..formats import Vocab

BOS, EOS = 1, 2
_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Tokenizer:
    def __init__(self, vocab: Vocab, bos: int = BOS, eos: int = EOS):
        """`bos`, `eos`: the model's ids (a GGUF states its own, contract section 4)."""
        self.vocab, self.bos, self.eos = vocab, bos, eos
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(vocab.pieces):
            self.lookup.setdefault(piece, i)  # a duplicated piece keeps its lower id

    def encode(self, text: bytes, bos: bool = True, eos: bool = False) -> list[int]:
        tokens = [self.bos] if bos else []
        if text:
            tokens.append(self.lookup[b" "])
        for group in _utf8_groups(text):
            if group in self.lookup:
                tokens.append(self.lookup[group])
            else:
                tokens.extend(b + 3 for b in group)
        self._merge(tokens)
        if eos:
            tokens.append(self.eos)
        return tokens

    def _merge(self, tokens: list[int]) -> None:
        pieces, scores = self.vocab.pieces, self.vocab.scores
        while True:
            best_score, best_id, best_i = float("-inf"), -1, -1
            for i in range(len(tokens) - 1):
                # BOS (if present) takes part like any token, as in run.c
                merged = self.lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
                if merged is not None and scores[merged] > best_score:
                    best_score, best_id, best_i = scores[merged], merged, i
            if best_i < 0:
                return
            tokens[best_i:best_i + 2] = [best_id]

    def decode(self, prev: int, token: int) -> bytes:
        piece = self.vocab.pieces[token]
        if prev == self.bos and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.fullmatch(piece)
        return bytes([int(m.group(1), 16)]) if m else piece


def _utf8_groups(text: bytes):
    """Split bytes into UTF-8 code point groups the way run.c does, malformed input included."""
    group = bytearray()
    for i, b in enumerate(text):
        if b & 0xC0 != 0x80:
            group = bytearray()
        group.append(b)
        nxt = text[i + 1] if i + 1 < len(text) else 0
        if nxt & 0xC0 == 0x80 and len(group) < 4:
            continue
        yield bytes(group)
        group = bytearray()


def safe_piece(piece: bytes) -> bytes:
    """What run.c's safe_printf would print: nothing for a lone control byte."""
    if not piece:
        return b""
    if len(piece) == 1:
        b = piece[0]
        if not (0x20 <= b <= 0x7E or b in b"\t\n\v\f\r"):
            return b""
    return piece
