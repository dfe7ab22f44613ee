import subprocess
import sys

import numpy as np

from orchestrator.formats import read_model, read_tokenizer, write_gguf, write_v1
from orchestrator.reference import Sampler, Tokenizer, Transformer, generate, logits_for
from orchestrator.ports.discover import ROOT
from orchestrator.ports.golden import GOLDEN_DIR
from orchestrator.reference.model import rmsnorm, rope_cos_sin, rotate_pairs, softmax

def test_stories260k_greedy_text(stories260k):
    """The reference prints the golden text; test_golden.py holds the file to the reference in turn,
    so this one checks the generate loop against a second path, the port's command line."""
    want = (GOLDEN_DIR / "stories260K.f32.greedy.txt").read_bytes()
    r = subprocess.run([sys.executable, str(ROOT / "impls" / "python" / "run.py"), str(stories260k.path), "-z",
                        str(stories260k.tokenizer), "-t", "0", "-n", "256", "-i", ""], capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stdout == want


def test_same_logits_from_v0_v1_and_gguf(tmp_path, stories260k):
    model = read_model(stories260k.path)
    vocab = read_tokenizer(stories260k.tokenizer, 512)
    write_v1(tmp_path / "m.v1.bin", model)
    write_gguf(tmp_path / "m.gguf", model, vocab)
    ids = [1, 403, 411, 9, 18, 300]
    ref = logits_for(Transformer(model), ids)
    for path in (tmp_path / "m.v1.bin", tmp_path / "m.gguf"):
        assert np.array_equal(logits_for(Transformer(read_model(path)), ids), ref)


def test_forward_matches_a_float64_implementation(tiny_model):
    """An independent float64 forward pass (whole-sequence attention with a causal mask)."""
    c, w = tiny_model.config, {k: np.asarray(v, dtype=np.float64) for k, v in tiny_model.weights.items()}
    ids = [1, 5, 77, 200, 3, 9]
    T, hs = len(ids), c.head_size
    x = w["token_embedding"][ids]
    pos = np.arange(T)[:, None]
    freq = 1.0 / 10000 ** ((np.arange(0, c.dim, 2) % hs) / hs)
    ang = pos * freq

    def rope(m):
        a, b = m[:, 0::2], m[:, 1::2]
        cos, sin = np.cos(ang[:, : a.shape[1]]), np.sin(ang[:, : a.shape[1]])
        out = np.empty_like(m)
        out[:, 0::2], out[:, 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    def norm(m, g):
        return g * m / np.sqrt((m * m).mean(axis=-1, keepdims=True) + 1e-5)

    for l in range(c.n_layers):
        h = norm(x, w["rms_att"][l])
        q, k, v = rope(h @ w["wq"][l].T), rope(h @ w["wk"][l].T), h @ w["wv"][l].T
        out = np.zeros_like(q)
        for head in range(c.n_heads):
            kv = head // (c.n_heads // c.n_kv_heads)
            qs, ks, vs = (m[:, s * hs:(s + 1) * hs] for m, s in ((q, head), (k, kv), (v, kv)))
            att = qs @ ks.T / np.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
            att = np.exp(att - att.max(axis=1, keepdims=True))
            out[:, head * hs:(head + 1) * hs] = (att / att.sum(axis=1, keepdims=True)) @ vs
        x = x + out @ w["wo"][l].T
        h = norm(x, w["rms_ffn"][l])
        g = h @ w["w1"][l].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w["w3"][l].T)) @ w["w2"][l].T
    expected = norm(x, w["rms_final"]) @ w["token_embedding"].T
    got = logits_for(Transformer(tiny_model), ids)
    assert np.abs(got - expected).max() < 1e-4 * (1 + np.abs(expected).max())


def test_building_blocks():
    x = np.array([3.0, 4.0], dtype=np.float32)
    assert np.allclose(rmsnorm(x, np.ones(2, np.float32)), x / np.sqrt(12.5 + 1e-5))
    assert np.isclose(softmax(np.array([1.0, 1.0], np.float32)).sum(), 1.0)
    cos, sin = rope_cos_sin(0, 4, 4)
    v = np.arange(4, dtype=np.float32)
    assert np.array_equal(rotate_pairs(v, cos, sin), v)  # position 0 does not rotate


def test_generation_stops_at_bos_unless_told(stories260k):
    model = read_model(stories260k.path)
    tok = Tokenizer(read_tokenizer(stories260k.tokenizer, 512))
    short = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), b"", 512)
    assert short.stats.positions < 512  # the story ends with BOS before seq_len
    full = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), b"", 300, ignore_bos=True)
    assert full.stats.positions == 300 and full.stats.generated_tokens == 300


def test_batched_prefill_rows_are_the_one_position_rows(stories260k, tmp_path):
    """forward_batch (docs/port-contract.md, section 6) at batch sizes that split the sequence
    unevenly: every row within the contract's float32 tolerance of forward(), same argmax; Q8_0
    on the tie-free tokens validate uses, where the roundings cannot part."""
    from orchestrator.models.convert import gguf_for
    from orchestrator.ports import rounding
    model = read_model(stories260k.path)
    ids = [1] + [(7 * i + 300) % 512 for i in range(79)]
    ref = logits_for(Transformer(model), ids)
    q8 = read_model(gguf_for(stories260k, tmp_path, type="q8_0"))
    q8_ids, tight = rounding.tie_free_ids(q8, ids[:24])
    q8_ref = logits_for(Transformer(q8), q8_ids)
    for batch in (7, 64, 80, 512):
        got = logits_for(Transformer(model), ids, batch)
        assert (np.abs(got - ref).max(axis=1) <= 1e-4 * (1 + np.abs(ref).max(axis=1))).all()
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
        got = logits_for(Transformer(q8), q8_ids, batch)[:tight]
        assert tight > 0 and (np.abs(got - q8_ref[:tight]).max(axis=1) <= 1e-4 * (1 + np.abs(q8_ref[:tight]).max(axis=1))).all()


def test_batched_prefill_prints_what_one_position_at_a_time_prints(stories260k):
    model = read_model(stories260k.path)
    tok = Tokenizer(read_tokenizer(stories260k.tokenizer, 512))
    prompt = b"Once upon a time, there was a little girl who liked"
    want = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), prompt, 96)
    for batch, steps in ((3, 96), (512, 96), (4, 5)):
        got = generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), prompt, steps, batch=batch)
        assert got.text == (want.text if steps == 96 else generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), prompt, steps).text)
        assert got.stats.prefill_positions == min(steps, want.stats.prompt_tokens) and got.stats.batch == batch
    assert want.stats.generated_tokens > 0 and want.stats.prefill_positions == want.stats.prompt_tokens
