"""The prompt of a prompt-processing (ppN) cell: text that the model's own tokenizer encodes to
exactly N tokens, BOS included, so every port reads the same N positions through its prefill.

llama-bench feeds random token ids; the ports take text (contract section 2), so the text is
built from plain story sentences, grown word by word and then padded a token at a time.
"""
from __future__ import annotations

from functools import lru_cache

from ..errors import PolyllamaError
from ..formats import read_tokenizer
from ..reference import Tokenizer

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. "
         "One day, she saw a big red ball in the park. She ran to it and kicked it very high. ")
PADS = (" a", " the", ".", " and", " ")  # tried in turn to add exactly one more token


@lru_cache(maxsize=16)
def prompt_text(tokenizer_path: str, vocab_size: int, n: int) -> str:
    tok = Tokenizer(read_tokenizer(tokenizer_path, vocab_size))

    def count(text: str) -> int:
        return len(tok.encode(text.encode(), bos=True, eos=False))

    words = (STORY * (n // 8 + 2)).split(" ")
    lo, hi = 0, len(words)  # the longest word prefix with at most n tokens (counts grow with words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= n:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    while count(text) < n:
        for pad in PADS:
            if count(text + pad) == count(text) + 1:
                text += pad
                break
        else:
            raise PolyllamaError(f"cannot build a {n}-token prompt with {tokenizer_path}")
    if count(text) != n:
        raise PolyllamaError(f"cannot build a {n}-token prompt with {tokenizer_path}")
    return text
