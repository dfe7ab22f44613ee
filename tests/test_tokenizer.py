import numpy as np
import pytest

from orchestrator.formats import read_tokenizer
from orchestrator.reference.tokenizer import Tokenizer, _utf8_groups, safe_piece


@pytest.fixture(scope="module")
def llama(llama2_tokenizer):
    return Tokenizer(read_tokenizer(llama2_tokenizer, 32000))


def test_known_llama2_encodings(llama):
    # vectors published with the Llama 2 tokenizer (see ../shared/models/README.md)
    assert llama.encode(b"I believe the meaning of life is") == [1, 306, 4658, 278, 6593, 310, 2834, 338]
    assert llama.encode(b"Once upon a time") == [1, 9038, 2501, 263, 931]


def test_encode_flags(llama):
    assert llama.encode(b"", bos=True, eos=False) == [1]
    assert llama.encode(b"", bos=False, eos=True) == [2]
    assert llama.encode(b"hi", bos=False, eos=True)[-1] == 2


def _decode_all(tok, ids):
    return b"".join(tok.decode(prev, cur) for prev, cur in zip(ids, ids[1:]))


@pytest.mark.parametrize("text", ["Once upon a time", "Zoë ate 日本 sushi 🍣!", "  two  spaces", "tab\tnew\nline"])
def test_decode_inverts_encode(llama, text):
    # the dummy prefix space is dropped after BOS, so decoding gives the text back exactly
    assert _decode_all(llama, llama.encode(text.encode())) == text.encode()


def test_byte_fallback(llama):
    ids = llama.encode("\U0001F9CA".encode(), bos=False)  # no piece for this emoji: 4 byte tokens
    assert ids[1:] == [b + 3 for b in "\U0001F9CA".encode()]
    assert llama.decode(5, ids[1]) == bytes([0xF0])


def test_utf8_grouping_like_run_c():
    assert list(_utf8_groups("aé日".encode())) == [b"a", "é".encode(), "日".encode()]
    # a stray continuation byte is its own group; a 5-byte run splits after 4
    assert list(_utf8_groups(b"\x80a")) == [b"\x80", b"a"]
    assert list(_utf8_groups(b"\xf0\x80\x80\x80\x80")) == [b"\xf0\x80\x80\x80", b"\x80"]


def test_merges_prefer_highest_score(tiny_vocab):
    tok = Tokenizer(tiny_vocab)
    ids = tok.encode(b"abc", bos=False)
    # every adjacent pair left unmerged is not in the vocabulary
    for a, b in zip(ids, ids[1:]):
        assert tiny_vocab.pieces[a] + tiny_vocab.pieces[b] not in tok.lookup
    assert b"".join(tiny_vocab.pieces[i] for i in ids) == b" abc"


def test_safe_piece():
    assert safe_piece(b"\x07") == b""
    assert safe_piece(b"\n") == b"\n"
    assert safe_piece(b"a") == b"a"
    assert safe_piece(b"\xe6\x97\xa5") == "日".encode()
    assert safe_piece(b"") == b""


def test_stories260k_tokenizer_round_trip(stories260k):
    tok = Tokenizer(read_tokenizer(stories260k.tokenizer, 512))
    rng = np.random.default_rng(0)
    words = [b"Lily", b"ball", b"park", b"happy", b"big", b"red", b"the", b"and", b"sun", b"Tom"]
    for _ in range(20):
        text = b" ".join(words[i] for i in rng.integers(0, len(words), 6))
        ids = tok.encode(text)
        assert all(0 <= i < 512 for i in ids)
        assert _decode_all(tok, ids) == text
