"""Contract 3 (docs/port-contract.md, section 4): GGUF files as llama.cpp writes them. F16 and BF16
tensors mixed with F32 ones, the model's own keys (RoPE base, epsilon, BOS and EOS ids), a file
whose tensors lie beyond 4 GiB, and a KV cache sized for the positions a run asks for. The
Python readers first, then every built port that says contract 3, against the reference."""
from __future__ import annotations

import struct
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import IN_CI, TINY
from corpus import RawGGUF

from orchestrator.errors import FormatError
from orchestrator.formats import Model, read_model, write_gguf
from orchestrator.formats.gguf_file import tensor_plan, write_gguf_streamed
from orchestrator.formats.half import HalfTensor
from orchestrator.models.synth import random_model, random_vocab
from orchestrator.ports.discover import discover, tool_env
from orchestrator.ports.validate import REFEREE_RTOL
from orchestrator.process import execute
from orchestrator.reference import Sampler, Tokenizer, Transformer, generate, logits_for

RTOL = 1e-4  # the contract's float32 tolerance (section 8)
PORTS = [p for p in discover() if p.reads("gguf") and p.manifest.contract >= 3]
IDS = [1, 40, 41, 300 - 1, 7, 8, 9, 10]


def _built(port):
    if not port.outputs_present():
        if IN_CI:
            pytest.fail(f"port {port.name} is not built (every port must build in CI)")
        pytest.skip(f"port {port.name} is not built")


def _run(port, path, *flags, timeout=300):
    return execute(port.run_argv() + [str(path), *flags], cwd=port.dir, env=tool_env(), timeout=timeout)


def _port_logits(port, path, ids, tmp_path, *flags) -> np.ndarray:
    out = tmp_path / f"{port.name}.logits"
    r = _run(port, path, "-m", "logits", "-k", ",".join(map(str, ids)), "-o", str(out), *flags)
    assert r.returncode == 0, f"{port.name}: exit {r.returncode}: {r.stderr.strip()[-300:]}"
    return np.fromfile(out, dtype="<f4").reshape(len(ids), -1)


def _close(got: np.ndarray, ref: np.ndarray) -> float:
    """The worst position's max |diff| relative to 1 + max |ref| (section 8's measure)."""
    return float((np.abs(got - ref).max(axis=1) / (1 + np.abs(ref).max(axis=1))).max())


# ---------------------------------------------------------------- 16-bit values

SPECIALS = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 1e-40, np.inf, -np.inf, np.nan,
                     1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38], dtype=np.float32)


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_16_bit_values_are_the_gguf_packages(kind):
    """What the converter writes is byte for byte what the `gguf` package's own conversion writes,
    ties, overflow, subnormals and NaN included."""
    import gguf
    x = np.concatenate([SPECIALS, np.random.default_rng(3).standard_normal(4096 - len(SPECIALS), dtype=np.float32)])
    x = x.reshape(64, 64)
    ours = HalfTensor.from_f32(x, kind).tobytes()
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.F16 if kind == "f16" else gguf.GGMLQuantizationType.BF16)
    assert ours == np.ascontiguousarray(theirs).tobytes()
    back = HalfTensor.from_f32(x, kind).dequantize()
    finite = np.isfinite(back)
    assert np.isnan(back[np.isnan(x)]).all()
    # widening is exact and rounding is to nearest: within half a unit of the 16-bit type
    ulp = 2.0 ** -11 if kind == "f16" else 2.0 ** -8
    close = np.abs(back[finite] - x[finite]) <= ulp * np.abs(x[finite]) + (2.0 ** -25 if kind == "f16" else 2.0 ** -134)
    assert close.all()


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_converted_file_tensors_are_the_gguf_packages(tmp_path, tiny_model, tiny_vocab, kind):
    """`invoke models.convert --type f16|bf16`: every matrix in the type, norms F32, each tensor's
    bytes what `gguf.quants.quantize` makes of the float32 tensor."""
    import gguf
    from gguf import GGUFReader
    path = tmp_path / f"m.{kind}.gguf"
    write_gguf(path, tiny_model.as_type(kind), tiny_vocab)
    qtype = gguf.GGMLQuantizationType.F16 if kind == "f16" else gguf.GGMLQuantizationType.BF16
    reader = GGUFReader(str(path))
    assert len(reader.tensors) == sum(1 for _ in tiny_model.tensors())
    by_name = {t.name: t for t in reader.tensors}
    for name, layer, t in tiny_model.tensors():
        gname = {"token_embedding": "token_embd.weight", "rms_final": "output_norm.weight"}.get(name)
        if gname is None:
            gname = {"rms_att": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
                     "rms_ffn": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}[name]
            gname = f"blk.{layer}.{gname}.weight"
        stored = by_name[gname]
        t = np.asarray(t, dtype=np.float32)
        if t.ndim == 1:
            assert stored.tensor_type == gguf.GGMLQuantizationType.F32, gname
            assert bytes(stored.data.tobytes()) == t.tobytes(), gname
        else:
            assert stored.tensor_type == qtype, gname
            assert bytes(stored.data.tobytes()) == np.ascontiguousarray(gguf.quants.quantize(t, qtype)).tobytes(), gname


def test_a_16_bit_norm_is_refused(tmp_path, tiny_model, tiny_vocab):
    path = tmp_path / "m.gguf"
    write_gguf(path, tiny_model.as_type("f16"), tiny_vocab)
    raw = RawGGUF.parse(path.read_bytes())
    raw.tensors = [(n, d, 1 if n == "blk.1.ffn_norm.weight" else t, o) for n, d, t, o in raw.tensors]
    path.write_bytes(raw.dump())
    with pytest.raises(FormatError, match="blk.1.ffn_norm.weight is F16; only matrices may be"):
        read_model(path)


# ---------------------------------------------------------------- files the ports run

def _mixed_model() -> Model:
    """F32, F16 and BF16 mixed within each layer, a BF16 embedding that is also the classifier."""
    m = random_model(TINY, seed=11)
    kinds = ["f16", "bf16", "f32", "f16", "bf16", "f16", "f32", "bf16", "f16"]
    w = {}
    for i, name in enumerate(("wq", "wk", "wv", "wo", "w1", "w2", "w3")):
        w[name] = [HalfTensor.from_f32(t, kinds[(i + layer) % len(kinds)]) if kinds[(i + layer) % len(kinds)] != "f32"
                   else np.asarray(t) for layer, t in enumerate(m.weights[name])]
    w["token_embedding"] = HalfTensor.from_f32(m.weights["token_embedding"], "bf16")
    return replace(m, weights={**m.weights, **w})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf3")
    vocab = random_vocab(TINY.vocab_size, seed=7)
    out = {}
    out["mixed"] = d / "mixed.gguf"
    write_gguf(out["mixed"], _mixed_model(), vocab)
    keyed = random_model(replace(TINY, rope_theta=500000.0, norm_eps=struct.unpack("<f", struct.pack("<f", 1e-6))[0]),
                         seed=7)
    out["keyed"] = d / "keyed.gguf"
    write_gguf(out["keyed"], keyed, vocab)
    out["default"] = d / "default.gguf"
    write_gguf(out["default"], random_model(TINY, seed=7), vocab)
    swapped = random_model(replace(TINY, bos_id=2, eos_id=1), seed=7)
    out["swapped"] = d / "swapped.gguf"
    write_gguf(out["swapped"], swapped, vocab)
    return out


def test_the_reference_reads_the_keys(files):
    c = read_model(files["keyed"]).config
    assert (c.rope_theta, c.norm_eps) == (500000.0, struct.unpack("<f", struct.pack("<f", 1e-6))[0])
    c = read_model(files["swapped"]).config
    assert (c.bos_id, c.eos_id) == (2, 1)
    assert read_model(files["mixed"]).types() == {"f32": 2 * 4 + 1, "f16": 5, "bf16": 6}


def test_the_keys_change_the_logits(files):
    """So that the ports' agreement below on the keyed file cannot come from ignoring the keys."""
    a = logits_for(Transformer(read_model(files["keyed"])), IDS)
    b = logits_for(Transformer(read_model(files["default"])), IDS)
    assert _close(a, b) > 10 * RTOL


def _bad_key_files(d, good) -> list[tuple[str, object, str]]:
    """(what, path, the key the error must name): each a good file with one key changed."""
    raw0 = good.read_bytes()
    cases = []

    def variant(name, change, key):
        raw = RawGGUF.parse(raw0)
        change(raw)
        path = d / f"bad-{name}.gguf"
        path.write_bytes(raw.dump())
        cases.append((name, path, key))

    def set_kv(key, vtype, value):
        def change(raw):
            raw.kvs = [k for k in raw.kvs if k[0] != key] + [(key, vtype, value)]
        return change

    s = lambda text: struct.pack("<Q", len(text)) + text.encode()  # noqa: E731
    variant("theta string", set_kv("llama.rope.freq_base", 8, s("10000")), "llama.rope.freq_base")
    variant("theta 1", set_kv("llama.rope.freq_base", 6, struct.pack("<f", 1.0)), "llama.rope.freq_base")
    variant("eps 0", set_kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 0.0)),
            "llama.attention.layer_norm_rms_epsilon")
    variant("eps nan", set_kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", float("nan"))),
            "llama.attention.layer_norm_rms_epsilon")
    variant("partial rotation", set_kv("llama.rope.dimension_count", 4, struct.pack("<I", 4)),
            "llama.rope.dimension_count")
    variant("rope scaling", set_kv("llama.rope.scaling.type", 8, s("linear")), "llama.rope.scaling.type")
    variant("experts", set_kv("llama.expert_count", 4, struct.pack("<I", 8)), "llama.expert_count")
    variant("bos outside", set_kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 300)),
            "tokenizer.ggml.bos_token_id")
    variant("eos outside", set_kv("tokenizer.ggml.eos_token_id", 5, struct.pack("<i", -1)),
            "tokenizer.ggml.eos_token_id")
    return cases


@pytest.fixture(scope="module")
def bad_keys(tmp_path_factory, files):
    return _bad_key_files(tmp_path_factory.mktemp("badkeys"), files["default"])


def test_the_reference_refuses_bad_keys(bad_keys):
    for what, path, key in bad_keys:
        with pytest.raises(FormatError, match=key.replace(".", r"\.")):
            read_model(path)
            pytest.fail(f"{what}: accepted")


def test_unknown_keys_are_ignored(tmp_path, files):
    raw = RawGGUF.parse(files["default"].read_bytes())
    raw.kvs += [("general.description", 8, struct.pack("<Q", 4) + b"text"),
                ("tokenizer.chat_template", 8, struct.pack("<Q", 2) + b"{}"),
                ("llama.rope.scaling.type", 8, struct.pack("<Q", 4) + b"none")]
    path = tmp_path / "extra.gguf"
    path.write_bytes(raw.dump())
    assert read_model(path).config == read_model(files["default"]).config


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_computes_with_the_files_keys_and_types(port, files, tmp_path):
    _built(port)
    if port.reads("gguf-f16") and port.reads("gguf-bf16"):
        # a peer (llama.cpp) rounds its activations to 16 bits: validate's referee tolerance
        tol = REFEREE_RTOL["gguf-bf16"] if port.manifest.role == "peer" else RTOL
        ref = logits_for(Transformer(read_model(files["mixed"])), IDS)
        for flags in (["-b", "1"], ["-b", "3", "-j", "2"]):
            got = _port_logits(port, files["mixed"], IDS, tmp_path, *flags)
            assert _close(got, ref) <= tol, f"mixed F32/F16/BF16 file at {flags}: {_close(got, ref):.2e}"
    ref = logits_for(Transformer(read_model(files["keyed"])), IDS)
    got = _port_logits(port, files["keyed"], IDS, tmp_path, "-b", "3")
    assert _close(got, ref) <= RTOL, f"theta 500000, eps 1e-6: {_close(got, ref):.2e}"


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_uses_the_files_bos_and_eos(port, files):
    """BOS and EOS swapped: encode starts with id 2, generation stops at it, decode drops the space
    after it; the greedy text is the reference's."""
    _built(port)
    model = read_model(files["swapped"])
    c = model.config
    for prompt in (b"ab ba", b""):
        want = generate(Transformer(model), Tokenizer(model.tokenizer, c.bos_id, c.eos_id), Sampler(0.0, 0.9, 1),
                        prompt, 24).text
        r = _run(port, files["swapped"], "-t", "0", "-n", "24", "-i", prompt.decode())
        assert r.returncode == 0, r.stderr[-300:]
        assert r.stdout == want, f"prompt {prompt!r}"


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_refuses_bad_keys(port, bad_keys):
    _built(port)
    failures = []
    for what, path, key in bad_keys:
        r = _run(port, path, "-n", "4", "-t", "0", timeout=60)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        if r.returncode != 3 or len(errors) != 1:
            failures.append(f"{what}: exit {r.returncode}, {len(errors)} error lines: {r.stderr.strip()[:200]!r}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- a KV cache sized for the run

# 160 layers of a tiny model at the largest context: 5 GiB of cache at full context (past the 4
# GiB limit), 20 KiB for four positions
KV = replace(TINY, dim=64, hidden_dim=96, n_layers=160, n_heads=8, n_kv_heads=8, vocab_size=300, seq_len=65536)


@pytest.fixture(scope="module")
def long_context(tmp_path_factory):
    path = tmp_path_factory.mktemp("kv") / "long-context.gguf"
    write_gguf(path, random_model(KV, seed=5), random_vocab(KV.vocab_size, seed=5))
    return path


PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('peak-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_sizes_the_kv_cache_for_the_run(port, long_context):
    """Four positions of a 65,536-context model run in little memory; asking for the whole context
    needs 5 GiB of cache and is refused with the contract's message."""
    _built(port)
    assert KV.kv_cache_bytes() > 4 << 30
    r = execute([sys.executable, "-c", PEAK, *port.run_argv(), str(long_context), "-n", "4", "-t", "0", "-e", "1"],
                cwd=port.dir, env=tool_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-300:]
    peak_mib = int(r.stderr.split("peak-kib")[-1].split()[0]) / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB for 4 positions (the full cache is 5 GiB)"
    r = _run(port, long_context, "-n", "0", "-t", "0", timeout=60)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 3 and len(errors) == 1 and "KV cache" in errors[0], r.stderr[-300:]


# ---------------------------------------------------------------- past 4 GiB

# 21 layers of 2048 x 5632 in F32 put the output matrix beyond 4 GiB into the file. The layers are
# holes (zeros: no disk space), so each layer adds nothing and the logits are the output matrix
# applied to the normalized embedding, which a reader that wraps offsets at 32 bits gets wrong.
BIG = replace(TINY, dim=2048, hidden_dim=5632, n_layers=21, n_heads=16, n_kv_heads=16, vocab_size=300, seq_len=64,
              shared_classifier=False)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "beyond-4GiB.gguf"
    rng = np.random.default_rng(9)
    values = {"token_embd.weight": rng.standard_normal((BIG.vocab_size, BIG.dim), dtype=np.float32),
              "output_norm.weight": (1 + 0.1 * rng.standard_normal(BIG.dim, dtype=np.float32)).astype(np.float32),
              "output.weight": 0.02 * rng.standard_normal((BIG.vocab_size, BIG.dim), dtype=np.float32)}

    def produce(gname, shape, kind):
        if gname in values:
            return values[gname].astype("<f4").tobytes()
        return np.ones(shape, dtype="<f4").tobytes() if len(shape) == 1 else None

    write_gguf_streamed(path, BIG, random_vocab(BIG.vocab_size, seed=9), tensor_plan(BIG, lambda *_: "f32"), produce)
    return path, values


def _big_expected(values, ids) -> np.ndarray:
    x = values["token_embd.weight"][ids].astype(np.float64)
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * values["output_norm.weight"]
    return (x @ values["output.weight"].T.astype(np.float64)).astype(np.float32)


def test_the_big_file_lies_beyond_4_gib_and_the_reference_reads_it(big_file):
    path, values = big_file
    assert path.stat().st_size > 4 << 30
    ids = [1, 5, 9]
    got = logits_for(Transformer(read_model(path), rows=len(ids)), ids, batch=len(ids))
    assert _close(got, _big_expected(values, ids)) <= RTOL


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.name)
def test_port_reads_tensors_beyond_4_gib(port, big_file, tmp_path):
    _built(port)
    path, values = big_file
    ids = [1, 5, 9]
    got = _port_logits(port, path, ids, tmp_path, "-j", "2")
    assert _close(got, _big_expected(values, ids)) <= RTOL
