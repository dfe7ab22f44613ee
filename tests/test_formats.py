import struct

import numpy as np
import pytest
from conftest import TINY, assert_same_weights

from orchestrator.errors import FormatError
from orchestrator.formats import read_model, read_tokenizer, sniff, write_gguf, write_tokenizer, write_v0, write_v1
from orchestrator.formats.checkpoint import rope_tables
from orchestrator.models.convert import bin_to_gguf, gguf_to_bin


@pytest.mark.parametrize("writer,fmt", [(write_v0, "v0"), (write_v1, "v1")])
@pytest.mark.parametrize("shared", [True, False])
def test_bin_round_trip(tmp_path, tiny_model, tiny_unshared, writer, fmt, shared):
    model = tiny_model if shared else tiny_unshared
    path = tmp_path / "m.bin"
    writer(path, model)
    assert sniff(path) == fmt
    back = read_model(path)
    assert back.fmt == fmt
    assert_same_weights(model, back)
    expected_header = 28 if fmt == "v0" else 256
    extra = 2 * TINY.seq_len * TINY.head_size // 2 if fmt == "v0" else 0
    assert path.stat().st_size == expected_header + 4 * (model.config.weight_count() + extra)


def test_v0_negative_vocab_means_unshared(tmp_path, tiny_unshared):
    path = tmp_path / "m.bin"
    write_v0(path, tiny_unshared)
    assert struct.unpack_from("<7i", path.read_bytes())[5] == -TINY.vocab_size
    assert not read_model(path).config.shared_classifier


@pytest.mark.parametrize("shared", [True, False])
def test_gguf_round_trip(tmp_path, tiny_model, tiny_unshared, tiny_vocab, shared):
    model = tiny_model if shared else tiny_unshared
    write_gguf(tmp_path / "m.gguf", model, tiny_vocab)
    back = read_model(tmp_path / "m.gguf")
    assert back.fmt == "gguf"
    assert_same_weights(model, back)
    assert back.tokenizer.pieces == tiny_vocab.pieces
    assert back.tokenizer.scores == pytest.approx(tiny_vocab.scores)


def test_gguf_is_readable_by_the_gguf_package(tmp_path, tiny_model, tiny_vocab):
    import gguf

    write_gguf(tmp_path / "m.gguf", tiny_model, tiny_vocab)
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.ffn_down.weight" in names
    assert "output.weight" not in names  # shared classifier
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert list(emb.shape) == [TINY.dim, TINY.vocab_size]  # GGUF lists the innermost dim first
    assert np.array_equal(np.asarray(emb.data).reshape(TINY.vocab_size, TINY.dim), tiny_model.weights["token_embedding"])
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"


def test_stories260k_bin_gguf_bin_is_bit_exact(tmp_path, stories260k):
    gguf_path = bin_to_gguf(stories260k.path, stories260k.tokenizer, tmp_path / "s.gguf")
    back_bin = gguf_to_bin(gguf_path, tmp_path / "back.bin", tmp_path / "back_tok.bin")
    original = read_model(stories260k.path)
    assert_same_weights(original, read_model(back_bin))
    # the legacy RoPE tables are recomputed, not carried: equal to float32 rounding
    raw = np.fromfile(stories260k.path, dtype="<f4", offset=28)
    n = original.config.weight_count()  # shared classifier: the tables follow every weight
    tables = raw[n: n + 2 * 512 * 4].reshape(2, 512, 4)
    real, imag = rope_tables(original.config)
    assert np.abs(tables[0] - real).max() < 1e-6 and np.abs(tables[1] - imag).max() < 1e-6
    assert (tmp_path / "back_tok.bin").read_bytes() == stories260k.tokenizer.read_bytes()


def test_tokenizer_round_trip(tmp_path, tiny_vocab):
    write_tokenizer(tmp_path / "t.bin", tiny_vocab)
    assert read_tokenizer(tmp_path / "t.bin", len(tiny_vocab)) == tiny_vocab


def test_gguf_export_refuses_a_non_utf8_piece_cleanly(tmp_path, tiny_model, tiny_vocab):
    from orchestrator.formats import Vocab
    pieces = list(tiny_vocab.pieces)
    pieces[300 - 1] = b"\xff\xfe"
    bad = Vocab(tuple(pieces), tiny_vocab.scores, tiny_vocab.max_token_length)
    with pytest.raises(FormatError, match="not UTF-8"):
        write_gguf(tmp_path / "m.gguf", tiny_model, bad)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
