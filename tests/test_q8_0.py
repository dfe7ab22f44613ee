"""GGUF Q8_0: the format, the converter against the `gguf` package's quantizer, the
reference's arithmetic against an independent evaluation, and the tolerance validate applies."""
import struct
import subprocess
import sys

import gguf  # a main dependency (pyproject.toml): missing is an error, never a skip
import numpy as np
import pytest
from conftest import TINY

from orchestrator.errors import FormatError
from orchestrator.formats import Config, Q8Tensor, read_model, write_gguf, write_v0
from orchestrator.formats.q8_0 import BLOCK_BYTES, quantize
from orchestrator.models.convert import gguf_for, gguf_to_bin, to_gguf
from orchestrator.models.synth import random_model, random_vocab
from orchestrator.ports.discover import ROOT
from orchestrator.reference import Transformer, logits_for
from orchestrator.reference.q8 import ACTIVATION_NOISE, matvec, quantize_activation, tie_margin

# rows of 64 (Q8_0) and of 48 (F32: not a multiple of 32), as stories260K's ffn_down
Q8_SHAPE = Config(dim=64, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=32)


def _gguf_q8(x: np.ndarray) -> bytes:
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).tobytes()


def _awkward_rows() -> np.ndarray:
    """Rows with what tends to break a quantizer: zeros, exact halves after scaling, the largest
    float32 below a half, a lone spike, tiny values whose scale is an fp16 subnormal, big values."""
    rng = np.random.default_rng(16)
    rows = [rng.standard_normal(64).astype(np.float32) * 0.02 for _ in range(6)]
    rows.append(np.zeros(64, np.float32))
    halves = np.zeros(64, np.float32)
    halves[:32] = 127 * np.arange(32) / 127  # d = 1: x * id = 0, 1, 2, ... exactly
    halves[32:] = np.float32(127) * (np.arange(32) + 0.5) / 31.5  # ties once scaled
    rows.append(halves)
    below = np.full(64, np.nextafter(np.float32(0.5), np.float32(0)), np.float32)
    below[0] = below[32] = 127.0  # x * id = 0.49999997: roundf gives 0, a naive floor(x + 0.5) gives 1
    rows.append(below)
    spike = np.zeros(64, np.float32)
    spike[5], spike[40] = 3.0, -1e-3
    rows.append(spike)
    rows.append((rng.standard_normal(64) * 1e-7).astype(np.float32))
    rows.append((rng.standard_normal(64) * 1e3).astype(np.float32))
    return np.stack(rows)


def test_quantize_is_byte_identical_to_the_gguf_package():
    x = _awkward_rows()
    assert quantize(x).tobytes() == _gguf_q8(x)
    big = (np.random.default_rng(1).standard_normal((512, 288)) * 0.05).astype(np.float32)
    assert quantize(big).tobytes() == _gguf_q8(big)


def test_quantize_rounds_half_away_from_zero_and_dequantizes_exactly():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [127.0, 2.5, -2.5, 3.5]  # d = 1
    t = quantize(x)
    assert t.qs[0, 0, :4].tolist() == [127, 3, -3, 4]
    assert t.row(0)[:4].tolist() == [127.0, 3.0, -3.0, 4.0]
    assert np.array_equal(t.dequantize()[0], t.row(0))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.zeros((2, 48), np.float32))


def test_activation_quantization_rounds_ties_to_even_with_the_fp16_scale():
    x = np.zeros(32, np.float32)
    x[:5] = [127.0, 2.5, -2.5, 3.5, 0.5]  # 127 / amax = 1: the products are these values exactly
    a = quantize_activation(x)
    assert a.qx[0, :5].tolist() == [127, 2, -2, 4, 0]
    y = np.full(32, 0.1, np.float32)  # 0.1 / 127 is not an fp16 value: the scale is rounded
    assert quantize_activation(y).dx[0] == np.float32(np.float16(np.float32(0.1) / np.float32(127)))
    assert quantize_activation(np.zeros(64, np.float32)).qx.tolist() == [[0] * 32] * 2


def test_matvec_is_exact_integers_then_float32_scales():
    rng = np.random.default_rng(3)
    w = quantize((rng.standard_normal((40, 96)) * 0.05).astype(np.float32))
    x = rng.standard_normal(96).astype(np.float32)
    a = quantize_activation(x)
    got = matvec(w, a)
    # independently: python integers for the blocks, the scale products rounded to float32, float64 sum
    expect = np.zeros(40)
    for r in range(40):
        for b in range(3):
            isum = sum(int(q) * int(p) for q, p in zip(w.qs[r, b], a.qx[b]))
            expect[r] += float(np.float32(isum) * (np.float32(w.d[r, b]) * a.dx[b]))
    assert np.abs(got - expect).max() <= 4 * np.finfo(np.float32).eps * np.abs(expect).max()


def test_tie_margin_sees_rounding_ties():
    x = np.zeros(32, np.float32)
    x[0], x[1] = 127.0, 2.5  # a quant exactly on a tie
    assert tie_margin(x) == 0.0
    x[1] = 2.2  # 0.3 from a tie; the scale 1.0 is 2^-12 (relative) from fp16's midpoint below it
    assert tie_margin(x) == pytest.approx(2.0 ** -12) and tie_margin(x) > ACTIVATION_NOISE
    x[0] = np.float32(127 * (1 + 2.0 ** -11))  # amax / 127 exactly halfway between two fp16 values
    assert tie_margin(x) == 0.0
    assert tie_margin(np.zeros(32, np.float32)) == float("inf")


# ---------------------------------------------------------------- the file format

@pytest.fixture
def q8_model():
    return random_model(Q8_SHAPE, seed=11).quantized()


def test_quantized_model_keeps_norms_and_short_rows_in_f32(q8_model):
    w = q8_model.weights
    assert isinstance(w["token_embedding"], Q8Tensor) and isinstance(w["wq"][0], Q8Tensor)
    assert isinstance(w["w1"][1], Q8Tensor) and isinstance(w["w3"][1], Q8Tensor)
    assert not isinstance(w["w2"][0], Q8Tensor)  # rows of hidden_dim = 48
    assert not isinstance(w["rms_att"][0], Q8Tensor) and not isinstance(w["rms_final"], Q8Tensor)
    assert q8_model.types() == {"q8_0": 2 * 6 + 1, "f32": 2 * 3 + 1}
    assert q8_model.weight_type == "q8_0"


@pytest.mark.parametrize("shared", [True, False])
def test_q8_gguf_round_trip_is_byte_exact(tmp_path, shared):
    c = Config(**{**Q8_SHAPE.__dict__, "shared_classifier": shared})
    model = random_model(c, seed=12).quantized()
    write_gguf(tmp_path / "m.gguf", model, random_vocab(c.vocab_size, 12))
    back = read_model(tmp_path / "m.gguf")
    assert back.fmt == "gguf-q8_0" and back.types() == model.types()
    for (name, layer, a), (_, _, b) in zip(model.tensors(), back.tensors()):
        raw = a.tobytes() if isinstance(a, Q8Tensor) else np.asarray(a, "<f4").tobytes()
        assert raw == (b.tobytes() if isinstance(b, Q8Tensor) else np.asarray(b).tobytes()), (name, layer)
    # the gguf package reads the same blocks
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert emb.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert bytes(np.asarray(emb.data)) == model.weights["token_embedding"].tobytes()
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 7  # MOSTLY_Q8_0


def test_q8_tensor_size_is_34_bytes_per_block(tmp_path, q8_model):
    write_gguf(tmp_path / "m.gguf", q8_model, random_vocab(300, 1))
    back = read_model(tmp_path / "m.gguf")
    emb = back.weights["token_embedding"]
    assert emb.shape == (300, 64) and emb.nbytes == 300 * 2 * BLOCK_BYTES
    assert q8_model.config.weight_bytes("q8_0") == sum(
        t.nbytes if isinstance(t, Q8Tensor) else 4 * np.asarray(t).size for _, _, t in back.tensors())


def _retype(path, tensor: str, ttype: int) -> None:
    """Set one tensor's type in place (its info ends with uint32 type, uint64 offset)."""
    blob = bytearray(path.read_bytes())
    name = tensor.encode()
    at = blob.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", blob, at)[0]
    struct.pack_into("<I", blob, at + 4 + 8 * n_dims, ttype)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("tensor,ttype,message", [
    ("blk.0.ffn_down.weight", 8, "rows of 48 values, not a multiple of the block size 32"),
    ("blk.1.attn_norm.weight", 8, "norms are F32"),
    ("blk.0.attn_q.weight", 2, r"only F32 \(0\), F16 \(1\), BF16 \(30\) and Q8_0 \(8\)"),
])
def test_reader_refuses_bad_q8_tensors(tmp_path, q8_model, tensor, ttype, message):
    path = tmp_path / "m.gguf"
    write_gguf(path, q8_model, random_vocab(300, 1))
    _retype(path, tensor, ttype)
    with pytest.raises(FormatError, match=message) as info:
        read_model(path)
    assert tensor in str(info.value)


def test_reader_sizes_q8_tensors_by_blocks(tmp_path):
    """An unshared classifier is the last tensor: cut into its blocks, it lies outside the file,
    even though its 32 x 300 values as bytes would still fit."""
    c = Config(**{**Q8_SHAPE.__dict__, "shared_classifier": False})
    path = tmp_path / "m.gguf"
    write_gguf(path, random_model(c, seed=4).quantized(), random_vocab(300, 1))
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:-17])
    with pytest.raises(FormatError, match="output.weight lies outside the file"):
        read_model(tmp_path / "cut.gguf")


# ---------------------------------------------------------------- the converter

def test_convert_task_writes_what_the_gguf_package_quantizes(tmp_path, tiny_vocab):
    model = random_model(Q8_SHAPE, seed=5)
    write_v0(tmp_path / "m.bin", model)
    from orchestrator.formats import write_tokenizer
    write_tokenizer(tmp_path / "tok.bin", tiny_vocab)
    r = subprocess.run([sys.executable, "-m", "invoke", "models.convert", "--src", str(tmp_path / "m.bin"),
                        "--dst", str(tmp_path / "q.gguf"), "--tokenizer", str(tmp_path / "tok.bin"), "--type", "q8_0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    q = read_model(tmp_path / "q.gguf")
    assert q.fmt == "gguf-q8_0"
    f32 = read_model(tmp_path / "m.bin").dequantized()
    for (name, layer, a), (_, _, b) in zip(f32.tensors(), q.tensors()):
        a = np.asarray(a, np.float32)
        if isinstance(b, Q8Tensor):
            assert b.tobytes() == _gguf_q8(a), (name, layer)
        else:
            assert a.shape[-1] % 32 or a.ndim == 1, (name, layer)
            assert np.array_equal(a, b)
    # from a GGUF (its tokenizer embedded) to the same Q8_0 file
    to_gguf(tmp_path / "m.bin", tmp_path / "f.gguf", tmp_path / "tok.bin")
    to_gguf(tmp_path / "f.gguf", tmp_path / "q2.gguf", weight_type="q8_0")
    assert all((a.tobytes() if isinstance(a, Q8Tensor) else np.asarray(a).tobytes())
               == (b.tobytes() if isinstance(b, Q8Tensor) else np.asarray(b).tobytes())
               for (_, _, a), (_, _, b) in zip(q.tensors(), read_model(tmp_path / "q2.gguf").tensors()))
    bad = subprocess.run([sys.executable, "-m", "invoke", "models.convert", "--src", str(tmp_path / "m.bin"),
                          "--dst", str(tmp_path / "x.gguf"), "--tokenizer", str(tmp_path / "tok.bin"), "--type", "q4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--type must be one of f32, q8_0" in bad.stderr


def test_q8_to_bin_is_the_dequantized_weights(tmp_path, q8_model, tiny_vocab):
    write_gguf(tmp_path / "q.gguf", q8_model, tiny_vocab)
    gguf_to_bin(tmp_path / "q.gguf", tmp_path / "back.bin")
    back = read_model(tmp_path / "back.bin")
    assert np.array_equal(back.weights["wq"][1], q8_model.weights["wq"][1].dequantize())
    assert np.array_equal(back.weights["w2"][0], q8_model.weights["w2"][0])


def test_gguf_for_makes_the_q8_export_once(tmp_path, store, stories260k):
    path = gguf_for(stories260k, tmp_path, type="q8_0")
    assert path.name.endswith(".q8_0.gguf") and read_model(path).fmt == "gguf-q8_0"
    stamp = path.stat().st_mtime_ns
    assert gguf_for(stories260k, tmp_path, type="q8_0") == path and path.stat().st_mtime_ns == stamp
    types = read_model(path).types()
    assert types == {"q8_0": 1 + 5 * 6, "f32": 5 * 3 + 1}  # ffn_down's rows of 172 stay F32


# ---------------------------------------------------------------- the reference against an independent evaluation

def _forward64(model, ids):
    """Every float64 except the Q8_0 products' integer part; blocks summed last to first."""
    c, w = model.config, model.weights
    hs = c.head_size

    def mv(m, x):
        if not isinstance(m, Q8Tensor):
            return np.asarray(m, np.float64) @ x
        b = x.reshape(-1, 32)
        amax = np.abs(b).max(axis=1)
        dx = (amax / 127).astype(np.float16).astype(np.float64)
        qx = np.rint(b * np.where(amax > 0, 127 / np.where(amax > 0, amax, 1), 0)[:, None]).astype(np.int64)
        isum = (m.qs.astype(np.int64) * qx[None]).sum(axis=2)
        return (isum * (m.d.astype(np.float64) * dx[None]))[:, ::-1].sum(axis=1)

    def norm(x, g):
        return np.asarray(g, np.float64) * x / np.sqrt((x * x).mean() + 1e-5)

    kc = np.zeros((c.n_layers, len(ids), c.kv_dim))
    vc = np.zeros_like(kc)
    out = []
    for pos, tok in enumerate(ids):
        emb = w["token_embedding"]
        x = (emb.row(tok) if isinstance(emb, Q8Tensor) else np.asarray(emb[tok])).astype(np.float64)
        ang = pos / 10000 ** ((np.arange(0, c.dim, 2) % hs) / hs)

        def rope(v):
            n = len(v) // 2
            r = np.empty_like(v)
            r[0::2] = v[0::2] * np.cos(ang[:n]) - v[1::2] * np.sin(ang[:n])
            r[1::2] = v[0::2] * np.sin(ang[:n]) + v[1::2] * np.cos(ang[:n])
            return r

        for l in range(c.n_layers):
            h = norm(x, w["rms_att"][l])
            q, kc[l, pos], vc[l, pos] = rope(mv(w["wq"][l], h)), rope(mv(w["wk"][l], h)), mv(w["wv"][l], h)
            att = np.empty(c.dim)
            for head in range(c.n_heads):
                s = slice((head // (c.n_heads // c.n_kv_heads)) * hs, (head // (c.n_heads // c.n_kv_heads) + 1) * hs)
                sc = kc[l, :pos + 1, s] @ q[head * hs:(head + 1) * hs] / np.sqrt(hs)
                sc = np.exp(sc - sc.max())
                att[head * hs:(head + 1) * hs] = (sc / sc.sum()) @ vc[l, :pos + 1, s]
            x = x + mv(w["wo"][l], att)
            h = norm(x, w["rms_ffn"][l])
            g = mv(w["w1"][l], h)
            x = x + mv(w["w2"][l], g / (1 + np.exp(-g)) * mv(w["w3"][l], h))
        out.append(mv(model.classifier, norm(x, w["rms_final"])))
    return np.array(out)


def test_reference_matches_a_float64_evaluation_where_no_rounding_is_near_a_tie(stories260k, tmp_path):
    """Tokens kept clear of ties: the two agree as tightly as float32 permits (validate's RTOL)."""
    from orchestrator.ports import rounding
    from orchestrator.ports.validate import RTOL

    model = read_model(gguf_for(stories260k, tmp_path, type="q8_0"))
    ids, tight = rounding.tie_free_ids(model, [1] + [(7 * i + 300) % 512 for i in range(11)])
    assert tight == len(ids) == 12
    ref = logits_for(Transformer(model), ids)
    other = _forward64(model, ids)
    scale = 1 + np.abs(other).max(axis=1)
    assert (np.abs(ref - other).max(axis=1) <= RTOL * scale).all()
    assert (np.abs(ref - other).max(axis=1) <= 1e-6 * scale).all()  # in fact much closer


def test_q8_reference_is_not_the_f32_one(tiny_vocab):
    """The activation is quantized too: the logits move by about 1%, far beyond float32 noise."""
    model = random_model(Q8_SHAPE, seed=9)
    q8 = model.quantized()
    ids = [1, 40, 7, 255]
    a8 = logits_for(Transformer(q8), ids)
    w8 = logits_for(Transformer(q8.dequantized()), ids)  # weights quantized, activations not
    rel = np.abs(a8 - w8).max() / (1 + np.abs(w8).max())
    assert 1e-4 < rel < 0.05


def test_shapes_whose_rows_are_not_blocks_stay_f32():
    c = Config(dim=48, hidden_dim=80, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=TINY.vocab_size, seq_len=8)
    q = random_model(c, 2).quantized()
    assert q.weight_type == "f32" and q.types() == {"f32": 11}
