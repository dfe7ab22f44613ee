"""llama2.c checkpoints: the legacy v0 layout and the v1 layout, read and written.

A `Model` holds a validated Config and the weight tensors under run.c's names. Reading
memory-maps the file, so a 440 MB model costs no copy. Every reader checks the header against
the contract's limits and the file size against the header before it maps anything.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ..errors import FormatError, opening
from ..files import atomic_path
from .config import Config
from .model import Model

V1_MAGIC = 0x616B3432
V1_HEADER_BYTES = 256
V0_HEADER_BYTES = 28
GGUF_MAGIC = b"GGUF"

# v1 writes the small vectors first, then the matrices (llama2.c export.py version 1).
V1_ORDER = ("rms_att", "rms_ffn", "rms_final", "token_embedding",
            "wq", "wk", "wv", "wo", "w1", "w2", "w3")


def sniff(path) -> str:
    """'gguf', 'v1' or 'v0', from the first bytes; raises FormatError for unreadable files."""
    head = _read_head(path, 8)
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == V1_MAGIC:
        return "v1"
    return "v0"


def _read_head(path, n: int) -> bytes:
    with opening(path), open(path, "rb") as f:
        return f.read(n)


def rope_tables(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The legacy freq_cis_real/imag tables of a v0 file, (seq_len, head_size/2) each."""
    hs = config.head_size
    freqs = (1.0 / (10000.0 ** (np.arange(0, hs, 2, dtype=np.float32)[: hs // 2] / hs))).astype(np.float32)
    angles = np.outer(np.arange(config.seq_len, dtype=np.float32), freqs).astype(np.float32)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _map_tensors(path, offset: int, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    total = sum(int(np.prod(s)) for _, s in layout)
    flat = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(total,))
    out, pos = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        out[name] = flat[pos:pos + n].reshape(shape)
        pos += n
    return out


def _check_size(path, expected: int, config: Config) -> None:
    actual = os.path.getsize(path)
    if actual != expected:
        kind = "truncated" if actual < expected else "oversized"
        raise FormatError(path, f"{kind}: file is {actual} bytes, header ({config.describe()}) implies {expected}")


def read_v0(path) -> Model:
    head = _read_head(path, V0_HEADER_BYTES)
    if len(head) < V0_HEADER_BYTES:
        raise FormatError(path, f"truncated: {len(head)} bytes, a v0 header needs {V0_HEADER_BYTES}")
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", head)
    config = Config(dim, hidden, layers, heads, kv_heads, abs(vocab), seq,
                    shared_classifier=vocab > 0).validate(path)
    shapes = config.tensor_shapes()
    wcls = shapes.pop("wcls", None)
    half = config.head_size // 2
    layout = list(shapes.items()) + [("freq_cis_real", (seq, half)), ("freq_cis_imag", (seq, half))]
    if wcls:
        layout.append(("wcls", wcls))
    _check_size(path, V0_HEADER_BYTES + 4 * sum(int(np.prod(s)) for _, s in layout), config)
    weights = _map_tensors(path, V0_HEADER_BYTES, layout)
    weights.pop("freq_cis_real")
    weights.pop("freq_cis_imag")
    return Model(config, weights, "v0", str(path))


def read_v1(path) -> Model:
    head = _read_head(path, V1_HEADER_BYTES)
    if len(head) < V1_HEADER_BYTES:
        raise FormatError(path, f"truncated: {len(head)} bytes, a v1 header needs {V1_HEADER_BYTES}")
    magic, version = struct.unpack_from("<Ii", head)
    if magic != V1_MAGIC:
        raise FormatError(path, f"bad magic 0x{magic:08x}, expected 0x{V1_MAGIC:08x}")
    if version != 1:
        raise FormatError(path, f"unsupported llama2.c format version {version} (only 0 and 1 are fp32)")
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack_from("<7i", head, 8)
    shared = head[36]
    if shared not in (0, 1):
        raise FormatError(path, f"shared_classifier flag is {shared}, expected 0 or 1")
    config = Config(dim, hidden, layers, heads, kv_heads, vocab, seq, bool(shared)).validate(path)
    shapes = config.tensor_shapes()
    layout = [(name, shapes[name]) for name in V1_ORDER]
    if not config.shared_classifier:
        layout.append(("wcls", shapes["wcls"]))
    _check_size(path, V1_HEADER_BYTES + 4 * config.weight_count(), config)
    return Model(config, _map_tensors(path, V1_HEADER_BYTES, layout), "v1", str(path))


def _write_atomic(path, chunks) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk if isinstance(chunk, bytes) else np.ascontiguousarray(chunk, dtype="<f4").tobytes())


def write_v0(path, model: Model, freq_tables: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    c = model.config
    vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
    header = struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.seq_len)
    real, imag = freq_tables if freq_tables is not None else rope_tables(c)
    names = [n for n in c.tensor_shapes() if n != "wcls"]
    chunks = [header] + [model.weights[n] for n in names] + [real, imag]
    if not c.shared_classifier:
        chunks.append(model.weights["wcls"])
    _write_atomic(path, chunks)


def write_v1(path, model: Model) -> None:
    c = model.config
    header = struct.pack("<Ii7iB", V1_MAGIC, 1, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                         c.n_kv_heads, c.vocab_size, c.seq_len, int(c.shared_classifier))
    header += b"\0" * (V1_HEADER_BYTES - len(header))
    chunks = [header] + [model.weights[n] for n in V1_ORDER]
    if not c.shared_classifier:
        chunks.append(model.weights["wcls"])
    _write_atomic(path, chunks)
