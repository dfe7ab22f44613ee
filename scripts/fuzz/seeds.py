"""Seed inputs for the fuzz harnesses, written by the project's own writers.

    python scripts/fuzz/seeds.py tiny tests/data/fuzz-seeds   the committed seeds: tiny valid files, a few KB each
    python scripts/fuzz/seeds.py real build/fuzz/real         stories260K (v0, v1, GGUF, Q8_0 GGUF) and tok512, when found

Each writes one folder per harness: checkpoint/ (v0, v1), gguf/ (F32, and Q8_0 as the converter
writes it), tokenizer/. Run it with the project's virtual environment (.venv/bin/python): it
imports the orchestrator and numpy.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator.formats import (Config, read_model, read_tokenizer, write_gguf,  # noqa: E402
                                  write_tokenizer, write_v0, write_v1)
from orchestrator.models.store import Store  # noqa: E402
from orchestrator.models.synth import random_model, random_vocab  # noqa: E402

# small enough that a seed is a few KB, big enough for two layers and grouped-query attention
TINY = Config(dim=8, hidden_dim=8, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=16, seq_len=8)
# a tokenizer needs 259 tokens, so the GGUF seeds (which embed one) keep the other sizes minimal
TINY_GGUF = Config(dim=4, hidden_dim=4, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=260, seq_len=4)
# Q8_0 needs rows of whole 32-value blocks: every matrix is Q8_0 at hidden_dim 32; at 48 ffn_down
# (rows of 48) stays F32, so one layer mixes the two types, as stories260K's does (23 and 38 KB,
# the second with its own output.weight)
TINY_Q8 = Config(dim=32, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=260, seq_len=4)


def typed_gguf(path: Path, model, vocab) -> None:
    """The model with its integer keys in the other GGUF integer types, the scores as F64, the
    token types as I8 and general.alignment 64 (a u64): paths that write_gguf never takes."""
    import gguf

    from orchestrator.formats.gguf_file import TENSOR_NAMES, WHOLE_NAMES, _token_to_gguf

    t, c = gguf.GGUFValueType, model.config
    texts, types = zip(*(_token_to_gguf(i, p) for i, p in enumerate(vocab.pieces)))
    w = gguf.GGUFWriter(str(path), "llama")
    w.data_alignment = 64
    w.add_key_value("general.alignment", 64, t.UINT64)
    w.add_key_value("llama.context_length", c.seq_len, t.UINT16)
    w.add_key_value("llama.embedding_length", c.dim, t.UINT8)
    w.add_key_value("llama.block_count", c.n_layers, t.INT64)
    w.add_key_value("llama.feed_forward_length", c.hidden_dim, t.INT16)
    w.add_key_value("llama.attention.head_count", c.n_heads, t.INT8)
    w.add_key_value("llama.attention.head_count_kv", c.n_kv_heads, t.UINT64)
    w.add_key_value("tokenizer.ggml.tokens", list(texts), t.ARRAY, t.STRING)
    w.add_key_value("tokenizer.ggml.scores", list(vocab.scores), t.ARRAY, t.FLOAT64)
    w.add_key_value("tokenizer.ggml.token_type", list(types), t.ARRAY, t.INT8)
    w.add_tensor(WHOLE_NAMES["token_embedding"], model.weights["token_embedding"])
    for layer in range(c.n_layers):
        for key, fmt in TENSOR_NAMES.items():
            w.add_tensor(fmt.format(layer), model.weights[key][layer])
    w.add_tensor(WHOLE_NAMES["rms_final"], model.weights["rms_final"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny(out: Path) -> None:
    for sub in ("checkpoint", "gguf", "tokenizer"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for shared in (True, False):
        name = "shared" if shared else "unshared"
        model = random_model(replace(TINY, shared_classifier=shared), 1)
        write_v0(out / "checkpoint" / f"v0-{name}.bin", model)
        write_v1(out / "checkpoint" / f"v1-{name}.bin", model)
        config = replace(TINY_GGUF, shared_classifier=shared)
        write_gguf(out / "gguf" / f"{name}.gguf", random_model(config, 1), random_vocab(config.vocab_size, 1))
    typed_gguf(out / "gguf" / "typed.gguf", random_model(TINY_GGUF, 1), random_vocab(TINY_GGUF.vocab_size, 1))
    write_gguf(out / "gguf" / "q8_0.gguf", random_model(TINY_Q8, 1).quantized(), random_vocab(TINY_Q8.vocab_size, 1))
    mixed = replace(TINY_Q8, hidden_dim=48, shared_classifier=False)
    write_gguf(out / "gguf" / "q8_0-mixed.gguf", random_model(mixed, 1).quantized(), random_vocab(mixed.vocab_size, 1))
    write_tokenizer(out / "tokenizer" / "tok260.bin", random_vocab(TINY_GGUF.vocab_size, 1))


def real(out: Path) -> int:
    try:
        found = Store().resolve("stories260K", allow_synthetic=False)
    except Exception as e:  # not on POLYLLAMA_MODEL_PATH
        print(f"note: no real seeds: {e}", file=sys.stderr)
        return 0
    if found.origin != "real" or found.tokenizer_origin != "real":
        print("note: no real seeds: stories260K is not the published file here", file=sys.stderr)
        return 0
    for sub in ("checkpoint", "gguf", "tokenizer"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    model = read_model(found.path)
    vocab = read_tokenizer(found.tokenizer, model.config.vocab_size)
    (out / "checkpoint" / "stories260K-v0.bin").write_bytes(found.path.read_bytes())
    write_v1(out / "checkpoint" / "stories260K-v1.bin", model)
    write_gguf(out / "gguf" / "stories260K.gguf", model, vocab)
    write_gguf(out / "gguf" / "stories260K-q8_0.gguf", model.quantized(), vocab)
    (out / "tokenizer" / "tok512.bin").write_bytes(found.tokenizer.read_bytes())
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("tiny", "real"):
        sys.exit("usage: seeds.py tiny|real OUT_DIR")
    out = Path(sys.argv[2])
    sys.exit(tiny(out) if sys.argv[1] == "tiny" else real(out))
