"""GGUF with llama.cpp's `llama` architecture names and the tokenizer embedded; each tensor F32,
or, for matrices, Q8_0 (orchestrator/formats/q8_0.py), F16 or BF16 (orchestrator/formats/half.py).

Writing goes through the `gguf` package, so the files are what llama.cpp's own tools write.
Reading is done here, by hand, because a reader that meets a hostile file must bound every count
and offset before it trusts it, and report the problem as one line.
"""
from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import FormatError, opening
from ..files import atomic_path
from .config import Config
from .half import KINDS as HALF_KINDS, HalfTensor, nbytes as half_nbytes
from .model import Model
from .q8_0 import BLOCK, GGML_TYPE as Q8_0, Q8Tensor, nbytes as q8_nbytes
from .tokenizer_file import Vocab, check_vocab

SPACE = "\u2581"
MAX_ENTRIES = 65536
DEFAULT_ALIGNMENT = 32
BOS_PIECE, EOS_PIECE = b"\n<s>\n", b"\n</s>\n"

# (llama2.c name, GGUF name with {} for the layer, or None for a whole tensor)
TENSOR_NAMES = {
    "rms_att": "blk.{}.attn_norm.weight",
    "wq": "blk.{}.attn_q.weight",
    "wk": "blk.{}.attn_k.weight",
    "wv": "blk.{}.attn_v.weight",
    "wo": "blk.{}.attn_output.weight",
    "rms_ffn": "blk.{}.ffn_norm.weight",
    "w1": "blk.{}.ffn_gate.weight",
    "w2": "blk.{}.ffn_down.weight",
    "w3": "blk.{}.ffn_up.weight",
}
WHOLE_NAMES = {"token_embedding": "token_embd.weight", "rms_final": "output_norm.weight", "wcls": "output.weight"}

F32 = 0
# general.file_type: llama.cpp's ALL_F32, MOSTLY_Q8_0, MOSTLY_F16, MOSTLY_BF16
FILE_TYPE = {"f32": 0, "q8_0": 7, "f16": 1, "bf16": 32}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


# ---------------------------------------------------------------- writing

def _token_to_gguf(i: int, piece: bytes) -> tuple[str, int]:
    """(text, token type) for llama.cpp; byte tokens and control tokens keep their spelling."""
    if i == 0:
        return "<unk>", 2
    if i in (1, 2) and piece in (BOS_PIECE, EOS_PIECE):
        return piece.strip().decode(), 3
    if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
        return piece.decode(), 6
    try:
        return piece.decode("utf-8").replace(" ", SPACE), 1
    except UnicodeDecodeError:
        raise ValueError(f"token {i} is not UTF-8, which GGUF strings must be") from None


def _token_from_gguf(i: int, text: str, ttype: int | None) -> bytes:
    if ttype == 3 and text in ("<s>", "</s>"):
        return BOS_PIECE if text == "<s>" else EOS_PIECE
    return text.replace(SPACE, " ").encode("utf-8", errors="surrogateescape")


def write_gguf(path, model: Model, vocab: Vocab, name: str = "polyllama") -> None:
    import gguf  # lazy: the gguf package pulls numpy-heavy modules in; only writing needs it

    path = Path(path)
    try:
        texts, types = zip(*(_token_to_gguf(i, p) for i, p in enumerate(vocab.pieces)))
    except ValueError as e:
        raise FormatError(path, f"cannot export the tokenizer: {e}") from None
    with atomic_path(path) as tmp:
        _write(gguf, tmp, model, vocab, texts, types, name)


def _write(gguf, tmp: Path, model: Model, vocab: Vocab, texts, types, name: str) -> None:
    c = model.config
    w = gguf.GGUFWriter(str(tmp), "llama")
    add_keys(w, c, vocab, texts, types, name, model.weight_type)
    _add_tensor(gguf, w, WHOLE_NAMES["token_embedding"], model.weights["token_embedding"])
    for layer in range(c.n_layers):
        for key, fmt in TENSOR_NAMES.items():
            _add_tensor(gguf, w, fmt.format(layer), model.weights[key][layer])
    _add_tensor(gguf, w, WHOLE_NAMES["rms_final"], model.weights["rms_final"])
    if not c.shared_classifier:
        _add_tensor(gguf, w, WHOLE_NAMES["wcls"], model.weights["wcls"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_plan(c: Config, kind_of) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, (rows, cols) or (n,), weight type) of every tensor in the order the writer puts
    them; `kind_of(llama2.c name, shape)` picks each tensor's type."""
    shapes = c.tensor_shapes()
    plan = [(WHOLE_NAMES["token_embedding"], shapes["token_embedding"], kind_of("token_embedding", shapes["token_embedding"]))]
    for layer in range(c.n_layers):
        plan += [(fmt.format(layer), shapes[key][1:], kind_of(key, shapes[key][1:])) for key, fmt in TENSOR_NAMES.items()]
    plan.append((WHOLE_NAMES["rms_final"], shapes["rms_final"], "f32"))
    if not c.shared_classifier:
        plan.append((WHOLE_NAMES["wcls"], shapes["wcls"], kind_of("wcls", shapes["wcls"])))
    return plan


def _stored_bytes(shape: tuple[int, ...], kind: str) -> int:
    n = int(np.prod(shape))
    return {"f32": 4 * n, "f16": 2 * n, "bf16": 2 * n}.get(kind) or q8_nbytes(*shape)


def write_gguf_streamed(path, c: Config, vocab: Vocab, plan, produce, name: str = "polyllama") -> None:
    """A GGUF too large to hold in memory (a 7B model): the header and tensor infos through the
    `gguf` package's writer, then each tensor's bytes from `produce(gguf name, shape, kind)`
    written at its offset, one at a time; a tensor for which it returns None stays a hole in the
    file (zeros, taking no disk space)."""
    import gguf

    path = Path(path)
    texts, types = zip(*(_token_to_gguf(i, p) for i, p in enumerate(vocab.pieces)))
    raw = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
           "q8_0": gguf.GGMLQuantizationType.Q8_0}
    weight_type = next((k for k in ("q8_0", "bf16", "f16") if any(t == k for _, _, t in plan)), "f32")
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        add_keys(w, c, vocab, texts, types, name, weight_type)
        for gname, shape, kind in plan:
            nbytes = _stored_bytes(shape, kind)
            if kind == "f32":
                w.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes)
            else:  # the byte shape: the writer turns it into the element shape of the raw type
                w.add_tensor_info(gname, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes, raw_dtype=raw[kind])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        data = np.memmap(tmp, dtype=np.uint8, mode="r")
        cur = _Cursor(tmp, data)
        n_tensors, n_kv = _read_header(cur)
        kv = _read_kvs(cur, n_kv)
        infos = _read_infos(cur, n_tensors)
        align = _alignment(tmp, kv)
        start = (cur.off + align - 1) // align * align
        del data, cur
        end = max(start + infos[g][2] + _stored_bytes(shape, kind) for g, shape, kind in plan)
        with open(tmp, "r+b") as f:
            f.truncate(end)
            for gname, shape, kind in plan:
                blob = produce(gname, shape, kind)
                if blob is not None:
                    assert len(blob) == _stored_bytes(shape, kind), gname
                    f.seek(start + infos[gname][2])
                    f.write(blob)


def add_keys(w, c: Config, vocab: Vocab, texts, types, name: str, weight_type: str) -> None:
    """Every key llama.cpp reads for a llama model, and the tokenizer."""
    w.add_name(name)
    w.add_context_length(c.seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_rope_dimension_count(c.head_size)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(FILE_TYPE[weight_type])
    w.add_tokenizer_model("llama")
    w.add_token_list(list(texts))
    w.add_token_scores(list(vocab.scores))
    w.add_token_types(list(types))
    w.add_bos_token_id(c.bos_id)
    w.add_eos_token_id(c.eos_id)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _add_tensor(gguf, w, name: str, t) -> None:
    if isinstance(t, Q8Tensor):
        # the blocks' bytes, one row of blocks per matrix row; the writer derives [cols, rows]
        raw = np.ascontiguousarray(t.blocks).view(np.uint8).reshape(t.shape[0], -1)
        w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    elif isinstance(t, HalfTensor):
        if t.kind == "f16":  # numpy's float16 is the writer's own F16
            w.add_tensor(name, t.bits.view(np.float16))
        else:  # BF16 bits as bytes: the writer derives [cols, rows] from the byte shape
            w.add_tensor(name, np.ascontiguousarray(t.bits).view(np.uint8), raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        w.add_tensor(name, np.asarray(t, dtype=np.float32))


# ---------------------------------------------------------------- reading

def _show(name: str) -> str:
    """A name read from the file, safe for a one-line message: escaped and cut short."""
    text = repr(name)[1:-1]
    return text if len(text) <= 80 else text[:77] + "..."


class _Cursor:
    def __init__(self, path, data):
        self.path, self.data, self.off = path, data, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.off + n > len(self.data):
            raise FormatError(self.path, f"truncated or corrupt: {what} runs past the end of the file")

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.data, self.off)[0]
        self.off += size
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.data[self.off:self.off + n])
        self.off += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            min_size = struct.calcsize(_SCALARS[etype]) if etype in _SCALARS else 8
            if etype not in _SCALARS and etype != _STRING:
                raise FormatError(self.path, f"{what}: unsupported array element type {etype}")
            self.need(count * min_size, what)
            if etype in _SCALARS:
                arr = np.frombuffer(self.data, dtype=np.dtype(_SCALARS[etype]), count=count, offset=self.off)
                self.off += count * min_size
                return arr
            return [self.string(what) for _ in range(count)]
        raise FormatError(self.path, f"{what}: unknown value type {vtype}")


def _int_key(path, kv: dict, key: str, default=None) -> int:
    v = kv.get(key, default)
    if v is None:
        raise FormatError(path, f"missing required key {key}")
    if isinstance(v, (str, np.ndarray, list, float, bool)) or not float(v).is_integer():
        raise FormatError(path, f"key {key} must be an integer")
    return int(v)


def _float_key(path, kv: dict, key: str, default: float) -> float:
    v = kv.get(key, default)
    if isinstance(v, (str, np.ndarray, list, bool)):
        raise FormatError(path, f"key {key} must be a number")
    v = float(v)
    if not np.isfinite(v):
        raise FormatError(path, f"key {key}={v} is not finite")
    return v


def _hyperparameters(path, kv: dict, head_size: int, vocab_size: int) -> dict:
    """The keys of contract section 4's table, with llama.cpp's defaults; what this architecture
    does not compute (partial rotation, RoPE scaling, experts) is refused rather than run wrongly."""
    theta = _float_key(path, kv, "llama.rope.freq_base", Config.rope_theta)
    if theta <= 1:
        raise FormatError(path, f"key llama.rope.freq_base={theta:g} must be above 1")
    eps = _float_key(path, kv, "llama.attention.layer_norm_rms_epsilon", Config.norm_eps)
    if not 0 < eps < 1:
        raise FormatError(path, f"key llama.attention.layer_norm_rms_epsilon={eps:g} must lie in (0, 1)")
    rot = _int_key(path, kv, "llama.rope.dimension_count", head_size)
    if rot != head_size:
        raise FormatError(path, f"key llama.rope.dimension_count={rot} differs from the head size {head_size} "
                                "(partial rotation is not supported)")
    scaling = kv.get("llama.rope.scaling.type", "none")
    if not isinstance(scaling, str) or scaling != "none":
        raise FormatError(path, f"key llama.rope.scaling.type={_show(str(scaling))} is not supported (only none)")
    if _int_key(path, kv, "llama.expert_count", 0) > 0:
        raise FormatError(path, "key llama.expert_count: mixture-of-experts models are not supported")
    ids = {}
    for name, key, default in (("bos_id", "tokenizer.ggml.bos_token_id", 1), ("eos_id", "tokenizer.ggml.eos_token_id", 2)):
        ids[name] = _int_key(path, kv, key, default)
        if not 0 <= ids[name] < vocab_size:
            raise FormatError(path, f"key {key}={ids[name]} is outside the vocabulary [0, {vocab_size})")
    return dict(rope_theta=theta, norm_eps=eps, **ids)


def _open(path):
    with opening(path):
        size = os.path.getsize(path)
        return (np.memmap(path, dtype=np.uint8, mode="r") if size else b""), size


def _read_header(cur: _Cursor) -> tuple[int, int]:
    """(tensor count, kv count) after the magic and a supported version."""
    if bytes(cur.data[:4]) != b"GGUF":
        raise FormatError(cur.path, "bad magic, not a GGUF file")
    cur.off = 4
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise FormatError(cur.path, f"unsupported GGUF version {version} (2 and 3 are read)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "kv count")
    if n_tensors > MAX_ENTRIES or n_kv > MAX_ENTRIES:
        raise FormatError(cur.path, f"implausible counts: {n_tensors} tensors, {n_kv} keys (limit {MAX_ENTRIES})")
    return n_tensors, n_kv


def _read_kvs(cur: _Cursor, n_kv: int) -> dict:
    """Keys must be non-empty and unique, as llama.cpp's loader requires."""
    kv = {}
    for _ in range(n_kv):
        key = cur.string("key")
        if not key:
            raise FormatError(cur.path, "a key is empty")
        if key in kv:
            raise FormatError(cur.path, f"key {_show(key)} appears twice")
        kv[key] = cur.value(cur.unpack("<I", f"type of {_show(key)}"), _show(key))
    return kv


def _read_infos(cur: _Cursor, n_tensors: int) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """Tensor name -> (dims, type, offset); names must be unique."""
    infos = {}
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        shown = _show(name)
        n_dims = cur.unpack("<I", shown)
        if n_dims > 4:
            raise FormatError(cur.path, f"tensor {shown} has {n_dims} dimensions")
        dims = tuple(cur.unpack("<Q", shown) for _ in range(n_dims))
        ttype = cur.unpack("<I", shown)
        offset = cur.unpack("<Q", shown)
        if name in infos:
            raise FormatError(cur.path, f"tensor {shown} appears twice")
        infos[name] = (dims, ttype, offset)
    return infos


def _alignment(path, kv: dict) -> int:
    align = _int_key(path, kv, "general.alignment", DEFAULT_ALIGNMENT)
    if align <= 0 or align & (align - 1) or align > 65536:
        raise FormatError(path, f"general.alignment={align} is not a power of two up to 65536")
    return align


def _config(path, kv: dict, infos: dict, vocab_size: int) -> Config:
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or arch != "llama":
        shown = _show(arch) if isinstance(arch, str) else type(arch).__name__
        raise FormatError(path, f"general.architecture is '{shown}', expected 'llama'")
    heads = _int_key(path, kv, "llama.attention.head_count")
    config = Config(
        dim=_int_key(path, kv, "llama.embedding_length"),
        hidden_dim=_int_key(path, kv, "llama.feed_forward_length"),
        n_layers=_int_key(path, kv, "llama.block_count"),
        n_heads=heads,
        n_kv_heads=_int_key(path, kv, "llama.attention.head_count_kv", heads),
        vocab_size=vocab_size,
        seq_len=_int_key(path, kv, "llama.context_length"),
        shared_classifier="output.weight" not in infos,
    ).validate(path)
    return replace(config, **_hyperparameters(path, kv, config.head_size, vocab_size))


def _expected_tensors(config: Config) -> dict[str, tuple[int, ...]]:
    """GGUF name -> (rows, cols) shape of every tensor the model has, and no other."""
    shapes = config.tensor_shapes()
    out = {gname: shapes[key] for key, gname in WHOLE_NAMES.items() if key in shapes}
    for key, fmt in TENSOR_NAMES.items():
        out.update({fmt.format(i): shapes[key][1:] for i in range(config.n_layers)})
    return out


def _tensor_bytes(path, gname: str, ttype: int, shape: tuple[int, ...]) -> int:
    """The tensor's size in the file, for the types the contract allows: F32 anywhere, F16 and
    BF16 for a matrix, Q8_0 for a matrix whose rows are a multiple of 32 long."""
    if ttype == F32:
        return 4 * int(np.prod(shape))
    kind = "Q8_0" if ttype == Q8_0 else HALF_KINDS[ttype].upper()
    if len(shape) != 2:
        raise FormatError(path, f"tensor {gname} is {kind}; only matrices may be, norms are F32")
    if ttype != Q8_0:
        return half_nbytes(*shape)
    if shape[1] % BLOCK:
        raise FormatError(path, f"tensor {gname} is Q8_0 with rows of {shape[1]} values, "
                                f"not a multiple of the block size {BLOCK}")
    return q8_nbytes(*shape)


def _check_tensor_table(path, infos: dict, expected: dict, align: int, data_start: int, size: int) -> None:
    """Exactly the expected tensors, F32, F16, BF16 or Q8_0, of the expected shapes, aligned, inside
    the file and not overlapping (what llama.cpp's loader requires too)."""
    for name in infos:
        if name not in expected:
            raise FormatError(path, f"unexpected tensor {_show(name)}")
    spans = []
    for gname, shape in expected.items():
        if gname not in infos:
            raise FormatError(path, f"missing tensor {gname}")
        dims, ttype, offset = infos[gname]
        if ttype not in (F32, Q8_0, *HALF_KINDS):
            raise FormatError(path, f"tensor {gname} has type {ttype}; only F32 (0), F16 (1), BF16 (30) "
                                    "and Q8_0 (8) are supported")
        if tuple(reversed(dims)) != shape:
            raise FormatError(path, f"tensor {gname} has dims {list(dims)}, expected {list(reversed(shape))}")
        nbytes = _tensor_bytes(path, gname, ttype, shape)
        if offset % align:
            raise FormatError(path, f"tensor {gname} offset {offset} is not a multiple of the alignment {align}")
        if data_start + offset + nbytes > size:
            raise FormatError(path, f"tensor {gname} lies outside the file")
        spans.append((offset, offset + nbytes, gname))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise FormatError(path, f"tensors {a} and {b} overlap")


def _vocab(path, kv: dict) -> Vocab:
    tokens, scores = kv.get("tokenizer.ggml.tokens"), kv.get("tokenizer.ggml.scores")
    if not isinstance(tokens, list) or not len(tokens):
        raise FormatError(path, "missing tokenizer.ggml.tokens")
    if not isinstance(scores, np.ndarray) or scores.dtype.kind not in "fiu" or len(scores) != len(tokens):
        raise FormatError(path, "tokenizer.ggml.scores missing, not numbers, or not one per token")
    types = kv.get("tokenizer.ggml.token_type")
    if types is not None and not (isinstance(types, np.ndarray) and types.dtype.kind in "iu"):
        raise FormatError(path, "tokenizer.ggml.token_type must be an array of integers")
    pieces = tuple(_token_from_gguf(i, t, int(types[i]) if types is not None and len(types) == len(tokens) else None)
                   for i, t in enumerate(tokens))
    return check_vocab(path, Vocab(pieces, tuple(float(s) for s in scores), max(1, max(len(p) for p in pieces))))


def read_gguf(path) -> Model:
    data, size = _open(path)
    cur = _Cursor(path, data)
    n_tensors, n_kv = _read_header(cur)
    kv = _read_kvs(cur, n_kv)
    infos = _read_infos(cur, n_tensors)
    align = _alignment(path, kv)
    data_start = (cur.off + align - 1) // align * align
    vocab = _vocab(path, kv)
    config = _config(path, kv, infos, len(vocab))
    expected = _expected_tensors(config)
    _check_tensor_table(path, infos, expected, align, data_start, size)

    def tensor(gname: str):
        shape, (_, ttype, offset) = expected[gname], infos[gname]
        if ttype == Q8_0:
            return Q8Tensor.from_buffer(data, data_start + offset, *shape)
        if ttype in HALF_KINDS:
            return HalfTensor.from_buffer(data, data_start + offset, *shape, HALF_KINDS[ttype])
        return np.frombuffer(data, dtype="<f4", count=int(np.prod(shape)), offset=data_start + offset).reshape(shape)

    shapes = config.tensor_shapes()
    weights = {key: tensor(gname) for key, gname in WHOLE_NAMES.items() if key in shapes}
    for key, fmt in TENSOR_NAMES.items():
        # a list of per-layer views: stacking would copy the whole model
        weights[key] = [tensor(fmt.format(i)) for i in range(config.n_layers)]
    model = Model(config, weights, "gguf", str(path))
    if model.weight_type != "f32":  # the format name ports list in port.toml to say they read these
        model.fmt = f"gguf-{model.weight_type}"
    model.tokenizer = vocab
    return model
