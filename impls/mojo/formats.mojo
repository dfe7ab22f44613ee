# Model files: format sniffing, llama2.c's v0 and v1 checkpoints, GGUF (F32, F16,
# BF16 and Q8_0 tensors, and the hyperparameters llama.cpp reads from its keys) and
# tokenizer.bin. Every reader checks the header against the contract's
# limits and the file's size before it takes a pointer into the map
# (docs/port-contract.md, sections 4 and 5). A v0 and a v1 file differ only in their header and the order
# of their tensors, so both go through one header reader and one size check.

from std.collections import List
from std.memory import bitcast
from model import (
    BPtr, ByteTable, Config, FPtr, MappedFile, Matrix, Model, Vocab, Weights, file_error,
    rd_f32, rd_i32, rd_u32, rd_u64, rd_u8, string_from, W_BF16, W_F16, W_F32, W_Q8_0,
)
from q8_0 import Q8_BLOCK, Q8_BLOCK_BYTES

comptime MAX_TOKEN_LENGTH = 1024
comptime MAX_GGUF_ENTRIES = 65536
comptime V1_MAGIC = 0x616B3432
comptime V0_HEADER_BYTES = 28
comptime V1_HEADER_BYTES = 256


def read_model(path: String) raises -> Model:
    """Any supported checkpoint, sniffed from its first bytes."""
    var file = MappedFile(path)
    if file.size >= 4 and bytes_equal(file.data, 4, "GGUF"):
        # the GGUF reader takes pointers into the bytes as it parses, so they move first
        file.load_huge_pages(path)
        return read_gguf(path, file^)
    return read_llama2c(path, file^)


def bytes_equal(p: BPtr, n: Int, s: String) -> Bool:
    var b = s.as_bytes()
    if len(b) != n:
        return False
    for i in range(n):
        if p.unsafe_load(i) != b[i]:
            return False
    return True


# ----------------------------------------------------------------------------
# llama2.c v0 and v1


@fieldwise_init
struct Llama2cHeader(Copyable, Movable):
    var version: Int  # 0 (legacy, no magic) or 1
    var size: Int  # bytes before the first tensor
    var config: Config


def read_llama2c_header(path: String, file: MappedFile) raises -> Llama2cHeader:
    """A v1 file starts with the magic; anything else is read as v0."""
    var h = file.data
    var v1 = file.size >= 4 and rd_u32(h, 0) == UInt32(V1_MAGIC)
    var version = 1 if v1 else 0
    var size = V1_HEADER_BYTES if v1 else V0_HEADER_BYTES
    if file.size < size:
        raise file_error(path, "truncated: " + String(file.size) + " bytes, a v" + String(version)
                         + " header needs " + String(size))
    var at = 0  # the seven int32 fields
    var vocab: Int
    var shared: Bool
    if v1:
        var stored = rd_i32(h, 4)
        if stored != 1:
            raise file_error(path, "unsupported llama2.c format version " + String(stored)
                             + " (only 0 and 1 are fp32)")
        var flag = rd_u8(h, 36)
        if flag != 0 and flag != 1:
            raise file_error(path, "shared_classifier flag is " + String(flag) + ", expected 0 or 1")
        at = 8
        vocab = rd_i32(h, at + 20)
        shared = flag == 1
    else:
        # a negative vocab_size flags an unshared classifier (wcls after the RoPE tables)
        vocab = abs(rd_i32(h, 20))
        shared = rd_i32(h, 20) > 0
    var c = Config(rd_i32(h, at), rd_i32(h, at + 4), rd_i32(h, at + 8), rd_i32(h, at + 12),
                   rd_i32(h, at + 16), vocab, rd_i32(h, at + 24), shared)
    c.validate(path)
    return Llama2cHeader(version, size, c^)


def check_size(path: String, actual: Int, expected: Int, c: Config) raises:
    if actual != expected:
        var kind = "truncated" if actual < expected else "oversized"
        raise file_error(path, kind + ": file is " + String(actual) + " bytes, header ("
                         + c.describe() + ") implies " + String(expected))


def map_layers(mut dst: List[FPtr], base: FPtr, at: Int, n_layers: Int, stride: Int) -> Int:
    """Per-layer pointers into one (layer, ...) tensor at float offset `at`; returns
    the offset after it."""
    for l in range(n_layers):
        dst.append(base.unsafe_offset(at + l * stride))
    return at + n_layers * stride


def map_matrices(mut dst: List[Matrix], base: FPtr, at: Int, n_layers: Int, stride: Int) -> Int:
    """map_layers for float32 matrices."""
    for l in range(n_layers):
        dst.append(Matrix.f32(base.unsafe_offset(at + l * stride)))
    return at + n_layers * stride


def read_llama2c(path: String, var file: MappedFile) raises -> Model:
    var h = read_llama2c_header(path, file)
    # v0's legacy freq_cis_real / freq_cis_imag tables, (seq_len, head_size / 2) each
    var freq = 2 * h.config.seq_len * (h.config.head_size() // 2) if h.version == 0 else 0
    check_size(path, file.size, h.size + 4 * (h.config.weight_floats() + freq), h.config)
    # only now, with the header and size known good, are the weights read in
    file.load_huge_pages(path)
    var m = Model(h.config.copy(), file^)
    var base = m.file.data.unsafe_offset(h.size).unsafe_bitcast[Float32]()
    if h.version == 0:
        m.weights = v0_weights(base, m.config, freq)
    else:
        m.weights = v1_weights(base, m.config)
    return m^


def v0_weights(base: FPtr, c: Config, freq: Int) -> Weights:
    """run.c's order: the embedding, each per-layer kind, rms_final, the RoPE
    tables (`freq` floats, skipped), wcls."""
    var d = c.dim
    var kv = c.kv_dim()
    var hd = c.hidden_dim
    var L = c.n_layers
    var w = Weights(base)
    w.token_embedding = Matrix.f32(base)
    var at = c.vocab_size * d
    at = map_layers(w.rms_att, base, at, L, d)
    at = map_matrices(w.wq, base, at, L, d * d)
    at = map_matrices(w.wk, base, at, L, kv * d)
    at = map_matrices(w.wv, base, at, L, kv * d)
    at = map_matrices(w.wo, base, at, L, d * d)
    at = map_layers(w.rms_ffn, base, at, L, d)
    at = map_matrices(w.w1, base, at, L, hd * d)
    at = map_matrices(w.w2, base, at, L, d * hd)
    at = map_matrices(w.w3, base, at, L, hd * d)
    w.rms_final = base.unsafe_offset(at)
    at += d + freq
    w.wcls = w.token_embedding if c.shared_classifier else Matrix.f32(base.unsafe_offset(at))
    return w^


def v1_weights(base: FPtr, c: Config) -> Weights:
    """export.py version 1 puts the small vectors first, then the matrices."""
    var d = c.dim
    var kv = c.kv_dim()
    var hd = c.hidden_dim
    var L = c.n_layers
    var w = Weights(base)
    var at = map_layers(w.rms_att, base, 0, L, d)
    at = map_layers(w.rms_ffn, base, at, L, d)
    w.rms_final = base.unsafe_offset(at)
    at += d
    w.token_embedding = Matrix.f32(base.unsafe_offset(at))
    at += c.vocab_size * d
    at = map_matrices(w.wq, base, at, L, d * d)
    at = map_matrices(w.wk, base, at, L, kv * d)
    at = map_matrices(w.wv, base, at, L, kv * d)
    at = map_matrices(w.wo, base, at, L, d * d)
    at = map_matrices(w.w1, base, at, L, hd * d)
    at = map_matrices(w.w2, base, at, L, d * hd)
    at = map_matrices(w.w3, base, at, L, hd * d)
    w.wcls = w.token_embedding if c.shared_classifier else Matrix.f32(base.unsafe_offset(at))
    return w^


# ----------------------------------------------------------------------------
# GGUF v2/v3, llama.cpp's `llama` names; norms F32, each matrix F32, F16, BF16 or
# Q8_0. GGUF files that llama.cpp's loader refuses are refused here too. Offsets and
# sizes are Int (64-bit), so tensors beyond 4 GiB are found where they lie.

comptime GGML_F32 = W_F32
comptime GGML_F16 = W_F16
comptime GGML_Q8_0 = W_Q8_0
comptime GGML_BF16 = W_BF16


struct Cursor:
    """Bounds-checked reading of a mapped GGUF file."""

    var data: BPtr
    var size: Int
    var off: Int
    var path: String

    def __init__(out self, data: BPtr, size: Int, path: String):
        self.data = data
        self.size = size
        self.off = 0
        self.path = path

    def need(self, n: UInt64, what: String) raises:
        if n > UInt64(self.size - self.off):
            raise file_error(self.path, "truncated or corrupt: " + what + " runs past the end of the file")

    def u32(mut self, what: String) raises -> UInt32:
        self.need(4, what)
        var v = rd_u32(self.data, self.off)
        self.off += 4
        return v

    def u64(mut self, what: String) raises -> UInt64:
        self.need(8, what)
        var v = rd_u64(self.data, self.off)
        self.off += 8
        return v

    def string(mut self, what: String) raises -> Int:
        """Skips a string; returns the offset of its bytes (length at off - 8 - ...)."""
        var n = self.u64(what)
        self.need(n, what)
        var at = self.off
        self.off += Int(n)
        return at


def gguf_scalar_size(t: Int) -> Int:
    """Bytes of a GGUF scalar value type, 0 for string/array/unknown."""
    if t == 0 or t == 1 or t == 7:
        return 1
    if t == 2 or t == 3:
        return 2
    if t == 4 or t == 5 or t == 6:
        return 4
    if t == 10 or t == 11 or t == 12:
        return 8
    return 0


def gguf_is_int(t: Int) -> Bool:
    return gguf_scalar_size(t) > 0 and t != 6 and t != 12


def gguf_int_at(p: BPtr, off: Int, t: Int) -> Int:
    """An integer-typed scalar, saturated to Int's range."""
    if t == 0 or t == 7:
        return rd_u8(p, off)
    if t == 1:
        return Int(bitcast[DType.int8, 1](p.unsafe_load(off)))
    if t == 2:
        return rd_u8(p, off) | (rd_u8(p, off + 1) << 8)
    if t == 3:
        return Int(bitcast[DType.int16, 1](UInt16(rd_u8(p, off) | (rd_u8(p, off + 1) << 8))))
    if t == 4:
        return Int(rd_u32(p, off))
    if t == 5:
        return rd_i32(p, off)
    if t == 10:
        var v = rd_u64(p, off)
        return Int(v) if v < UInt64(1 << 62) else (1 << 62)
    return Int(bitcast[DType.int64, 1](rd_u64(p, off)))


def gguf_is_number(t: Int) -> Bool:
    """Integer and float value types; a bool is neither."""
    return gguf_scalar_size(t) > 0 and t != 7


def gguf_f64_at(p: BPtr, off: Int, t: Int) -> Float64:
    """A numeric scalar as float64 (exact for f32 and f64)."""
    if t == 6:
        return Float64(rd_f32(p, off))
    if t == 12:
        return bitcast[DType.float64, 1](rd_u64(p, off))
    return Float64(gguf_int_at(p, off, t))


def gguf_float_at(p: BPtr, off: Int, t: Int) -> Float32:
    if t == 6:
        return rd_f32(p, off)
    if t == 12:
        return Float32(bitcast[DType.float64, 1](rd_u64(p, off)))
    return Float32(gguf_int_at(p, off, t))


@fieldwise_init
struct KvValue(Copyable, Movable):
    """Where one key's value lies in the file (absent: type = -1)."""

    var vtype: Int  # value type, or -1 when the key is absent
    var off: Int  # offset of the value (of the first element, for arrays)
    var etype: Int  # array element type
    var count: Int  # array element count

    @staticmethod
    def absent() -> KvValue:
        return KvValue(-1, 0, -1, 0)


def skip_gguf_value(mut cur: Cursor, vtype: Int, key: String) raises -> KvValue:
    var at = cur.off
    var size = gguf_scalar_size(vtype)
    if size > 0:
        cur.need(UInt64(size), key)
        cur.off += size
        return KvValue(vtype, at, -1, 0)
    if vtype == 8:
        _ = cur.string(key)
        return KvValue(vtype, at, -1, 0)
    if vtype == 9:
        var etype = Int(cur.u32(key))
        var count = cur.u64(key)
        var esize = gguf_scalar_size(etype)
        if esize == 0 and etype != 8:
            raise file_error(cur.path, key + ": unsupported array element type " + String(etype))
        var min_size = esize if esize > 0 else 8
        # each element takes at least min_size bytes: bounds the count before the loop
        if count > UInt64(cur.size - cur.off) // UInt64(min_size):
            raise file_error(cur.path, "truncated or corrupt: " + key + " runs past the end of the file")
        var first = cur.off
        if esize > 0:
            cur.off += Int(count) * esize
        else:
            for _ in range(Int(count)):
                _ = cur.string(key)
        return KvValue(vtype, first, etype, Int(count))
    raise file_error(cur.path, key + ": unknown value type " + String(vtype))


def gguf_int_key(path: String, data: BPtr, kv: KvValue, key: String, default: Int) raises -> Int:
    if kv.vtype < 0:
        if default < 0:
            raise file_error(path, "missing required key " + key)
        return default
    if not gguf_is_int(kv.vtype) or kv.vtype == 7:  # a bool is no count
        raise file_error(path, "key " + key + " must be an integer")
    return gguf_int_at(data, kv.off, kv.vtype)


# Indices into the list read_gguf_keys returns.
comptime K_ARCH = 0
comptime K_ALIGN = 1
comptime K_DIM = 2
comptime K_HIDDEN = 3
comptime K_LAYERS = 4
comptime K_HEADS = 5
comptime K_KV_HEADS = 6
comptime K_SEQ = 7
comptime K_TOKENS = 8
comptime K_SCORES = 9
comptime K_TYPES = 10
comptime K_THETA = 11
comptime K_EPS = 12
comptime K_ROPE_DIMS = 13
comptime K_BOS = 14
comptime K_EOS = 15
comptime K_ROPE_SCALING = 16
comptime K_EXPERTS = 17


def read_gguf_header(mut cur: Cursor, mut n_tensors: Int, mut n_kv: Int) raises:
    """Magic, version and the two counts."""
    cur.need(4, "magic")
    if not bytes_equal(cur.data, 4, "GGUF"):
        raise file_error(cur.path, "bad magic, not a GGUF file")
    cur.off = 4
    var version = cur.u32("version")
    if version != 2 and version != 3:
        raise file_error(cur.path, "unsupported GGUF version " + String(version) + " (2 and 3 are read)")
    var tensors = cur.u64("tensor count")
    var kvs = cur.u64("kv count")
    if tensors > UInt64(MAX_GGUF_ENTRIES) or kvs > UInt64(MAX_GGUF_ENTRIES):
        raise file_error(cur.path, "implausible counts: " + String(tensors) + " tensors, " + String(kvs)
                         + " keys (limit " + String(MAX_GGUF_ENTRIES) + ")")
    n_tensors = Int(tensors)
    n_kv = Int(kvs)


def read_gguf_keys(mut cur: Cursor, n_kv: Int) raises -> List[KvValue]:
    """The values of the keys this reader uses, by K_* index. llama.cpp refuses an
    empty key and a key given twice, and so does this reader: which of two values
    would be meant is anyone's guess."""
    var wanted = ["general.architecture", "general.alignment", "llama.embedding_length",
                  "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count",
                  "llama.attention.head_count_kv", "llama.context_length", "tokenizer.ggml.tokens",
                  "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "llama.rope.freq_base",
                  "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "llama.rope.scaling.type",
                  "llama.expert_count"]
    var found = List[KvValue](length=len(wanted), fill=KvValue.absent())
    var seen = ByteTable(n_kv)
    for i in range(n_kv):
        var key_at = cur.string("key")
        var key_ptr = cur.data.unsafe_offset(key_at)
        var key_len = cur.off - key_at
        var key = string_from(key_ptr, key_len)
        if key_len == 0:
            raise file_error(cur.path, "key " + String(i + 1) + " of " + String(n_kv) + " is empty")
        if seen.find(key_ptr, key_len) >= 0:
            raise file_error(cur.path, "key " + key + " appears twice")
        seen.insert(key_ptr, key_len, i, False)
        var vtype = Int(cur.u32("type of " + key))
        var value = skip_gguf_value(cur, vtype, key)
        for k in range(len(wanted)):
            if bytes_equal(key_ptr, key_len, wanted[k]):
                found[k] = value.copy()
    return found^


def gguf_number_key(path: String, data: BPtr, kv: KvValue, key: String, default: Float64) raises -> Float64:
    """A float key: any integer or float type (a string or a bool is the wrong
    kind); absent, its default."""
    if kv.vtype < 0:
        return default
    if not gguf_is_number(kv.vtype):
        raise file_error(path, "key " + key + " must be a number (value type " + String(kv.vtype) + ")")
    return gguf_f64_at(data, kv.off, kv.vtype)


def gguf_whole_key(path: String, data: BPtr, kv: KvValue, key: String, default: Int) raises -> Int:
    """An integer key of the contract's table: any integer type (a float, a string
    or a bool is the wrong kind); absent, its default."""
    if kv.vtype < 0:
        return default
    if not gguf_is_number(kv.vtype) or kv.vtype == 6 or kv.vtype == 12:
        raise file_error(path, "key " + key + " must be an integer (value type " + String(kv.vtype) + ")")
    return gguf_int_at(data, kv.off, kv.vtype)


def finite(v: Float64) -> Bool:
    return v - v == 0  # inf - inf and NaN - NaN are NaN


def gguf_config(path: String, data: BPtr, found: List[KvValue], shared: Bool) raises -> Config:
    """The llama.* keys; the vocabulary is the token list's length. The keys that
    change the arithmetic (RoPE base, norm epsilon) and the special ids are read
    with llama.cpp's defaults; what this architecture does not compute (partial
    rotation, RoPE scaling, experts) is refused rather than run wrongly."""
    var tokens = found[K_TOKENS].copy()
    var scores = found[K_SCORES].copy()
    if tokens.vtype != 9 or tokens.etype != 8 or tokens.count == 0:
        raise file_error(path, "missing tokenizer.ggml.tokens")
    if scores.vtype != 9 or gguf_scalar_size(scores.etype) == 0 or scores.count != tokens.count:
        raise file_error(path, "tokenizer.ggml.scores missing or not one per token")
    var heads = gguf_int_key(path, data, found[K_HEADS], "llama.attention.head_count", -1)
    var c = Config(
        gguf_int_key(path, data, found[K_DIM], "llama.embedding_length", -1),
        gguf_int_key(path, data, found[K_HIDDEN], "llama.feed_forward_length", -1),
        gguf_int_key(path, data, found[K_LAYERS], "llama.block_count", -1),
        heads,
        gguf_int_key(path, data, found[K_KV_HEADS], "llama.attention.head_count_kv", max(heads, 0)),
        tokens.count,
        gguf_int_key(path, data, found[K_SEQ], "llama.context_length", -1),
        shared,
    )
    c.validate(path)

    var theta = gguf_number_key(path, data, found[K_THETA], "llama.rope.freq_base", 10000.0)
    if not (finite(theta) and theta > 1):
        raise file_error(path, "key llama.rope.freq_base=" + String(theta) + " must be finite and > 1")
    var eps = gguf_number_key(path, data, found[K_EPS], "llama.attention.layer_norm_rms_epsilon", 1e-5)
    if not (finite(eps) and eps > 0 and eps < 1):
        raise file_error(path, "key llama.attention.layer_norm_rms_epsilon=" + String(eps)
                         + " must be finite, > 0 and < 1")
    var rope_dims = gguf_whole_key(path, data, found[K_ROPE_DIMS], "llama.rope.dimension_count", c.head_size())
    if rope_dims != c.head_size():
        raise file_error(path, "key llama.rope.dimension_count=" + String(rope_dims) + " must equal head_size="
                         + String(c.head_size()) + " (partial rotation is not this architecture)")
    var bos = gguf_whole_key(path, data, found[K_BOS], "tokenizer.ggml.bos_token_id", 1)
    if bos < 0 or bos >= c.vocab_size:
        raise file_error(path, "key tokenizer.ggml.bos_token_id=" + String(bos) + " is outside [0, "
                         + String(c.vocab_size) + ")")
    var eos = gguf_whole_key(path, data, found[K_EOS], "tokenizer.ggml.eos_token_id", 2)
    if eos < 0 or eos >= c.vocab_size:
        raise file_error(path, "key tokenizer.ggml.eos_token_id=" + String(eos) + " is outside [0, "
                         + String(c.vocab_size) + ")")
    var scaling = found[K_ROPE_SCALING].copy()
    if scaling.vtype >= 0:
        if scaling.vtype != 8:
            raise file_error(path, "key llama.rope.scaling.type must be a string (value type "
                             + String(scaling.vtype) + ")")
        var n = Int(rd_u64(data, scaling.off))
        var text = data.unsafe_offset(scaling.off + 8)
        if not bytes_equal(text, n, "none"):
            raise file_error(path, "key llama.rope.scaling.type is '" + string_from(text, n)
                             + "': RoPE scaling is not supported (only 'none')")
    var experts = gguf_whole_key(path, data, found[K_EXPERTS], "llama.expert_count", 0)
    if experts > 0:
        raise file_error(path, "key llama.expert_count=" + String(experts)
                         + ": mixture-of-experts models are not supported (0 experts only)")
    c.rope_theta = Float32(theta)
    c.norm_eps = Float32(eps)
    c.bos_id = bos
    c.eos_id = eos
    return c^


struct GgufTensors(Movable):
    """The tensor infos by name. `locate` checks one tensor and marks it used; the
    table as a whole is then checked for tensors that are not the model's and for
    overlapping data."""

    var path: String
    var data: BPtr
    var size: Int
    var names: ByteTable  # name -> index
    var name_at: List[Int]  # (tensor) file offset of the name's bytes
    var name_len: List[Int]
    var ndims: List[Int]
    var dims: List[UInt64]  # (tensor, 4), innermost first
    var ttype: List[Int]
    var offset: List[UInt64]  # from the start of the data section
    var used: List[Bool]
    var data_start: Int
    var align: Int

    def __init__(out self, path: String, data: BPtr, size: Int, n: Int):
        self.path = path
        self.data = data
        self.size = size
        self.names = ByteTable(n)
        self.name_at = List[Int]()
        self.name_len = List[Int]()
        self.ndims = List[Int]()
        self.dims = List[UInt64]()
        self.ttype = List[Int]()
        self.offset = List[UInt64]()
        self.used = List[Bool]()
        self.data_start = 0
        self.align = 32

    def count(self) -> Int:
        return len(self.ttype)

    def name(self, i: Int) -> String:
        return string_from(self.data.unsafe_offset(self.name_at[i]), self.name_len[i])

    def find(self, gname: String) -> Int:
        var gb = gname.as_bytes()
        return self.names.find(BPtr(unsafe_from_address=Int(gb.unsafe_ptr())), len(gb))

    def bytes_of(self, i: Int) -> UInt64:
        """Tensor i's size in the data, by its type (F32, F16, BF16 or Q8_0, once
        checked; its dims equal the config's by then, so no product overflows)."""
        var elements = UInt64(1)
        for j in range(self.ndims[i]):
            elements *= self.dims[4 * i + j]
        var t = self.ttype[i]
        if t == GGML_Q8_0:
            return elements // UInt64(Q8_BLOCK) * UInt64(Q8_BLOCK_BYTES)
        if t == GGML_F16 or t == GGML_BF16:
            return 2 * elements
        return 4 * elements

    def locate(mut self, gname: String, rows: Int, cols: Int) raises -> Int:
        """The index of a (rows, cols) matrix, or a (cols) vector when rows == 0, F32
        or (matrices only) F16, BF16 or Q8_0, checked and marked used."""
        var i = self.find(gname)
        if i < 0:
            raise file_error(self.path, "missing tensor " + gname)
        var t = self.ttype[i]
        var half = t == GGML_F16 or t == GGML_BF16
        if t != GGML_F32 and t != GGML_Q8_0 and not half:
            raise file_error(self.path, "tensor " + gname + " has type " + String(t)
                             + "; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported")
        var want_dims = 2 if rows > 0 else 1
        var ok = self.ndims[i] == want_dims and self.dims[4 * i] == UInt64(cols)
        if want_dims == 2:
            ok = ok and self.dims[4 * i + 1] == UInt64(rows)
        if not ok:
            var shape = "[" + String(cols) + (", " + String(rows) if rows > 0 else "") + "]"
            raise file_error(self.path, "tensor " + gname + " has other dims than the expected " + shape)
        if t == GGML_Q8_0 and rows == 0:
            raise file_error(self.path, "tensor " + gname + " is Q8_0; only matrices may be, norms are F32")
        if half and rows == 0:
            raise file_error(self.path, "tensor " + gname + " is " + ("F16" if t == GGML_F16 else "BF16")
                             + "; only matrices may be, norms are F32")
        if t == GGML_Q8_0 and cols % Q8_BLOCK != 0:
            raise file_error(self.path, "tensor " + gname + " is Q8_0 with rows of " + String(cols)
                             + " values, not a multiple of the block size " + String(Q8_BLOCK))
        var offset = self.offset[i]
        if offset % UInt64(self.align) != 0:
            raise file_error(self.path, "tensor " + gname + " has offset " + String(offset)
                             + ", not a multiple of general.alignment=" + String(self.align))
        # the dims equal the config's, so the size cannot overflow; all of it in 64-bit
        var nbytes = Int(self.bytes_of(i))
        # Q8_0 blocks are read bytewise, 16-bit rows through 2-byte loads
        var misaligned = (t == GGML_F32 and offset % 4 != 0) or (half and offset % 2 != 0)
        if misaligned or offset > UInt64(self.size) or self.data_start + Int(offset) + nbytes > self.size:
            raise file_error(self.path, "tensor " + gname + " lies outside the file")
        self.used[i] = True
        return i

    def bytes_at(self, i: Int) -> BPtr:
        return self.data.unsafe_offset(self.data_start + Int(self.offset[i]))

    def get(mut self, gname: String, cols: Int) raises -> FPtr:
        """A float32 vector (a norm)."""
        return self.bytes_at(self.locate(gname, 0, cols)).unsafe_bitcast[Float32]()

    def matrix(mut self, gname: String, rows: Int, cols: Int) raises -> Matrix:
        var i = self.locate(gname, rows, cols)
        return Matrix(self.bytes_at(i), self.ttype[i])

    def check_unused(self, n_layers: Int) raises:
        """llama.cpp insists that the file holds exactly the tensors of its block_count."""
        var used = 0
        for i in range(self.count()):
            used += 1 if self.used[i] else 0
        for i in range(self.count()):
            if not self.used[i]:
                raise file_error(self.path, "unexpected tensor " + self.name(i) + ": a " + String(n_layers)
                                 + "-layer model has " + String(used) + " tensors, the file "
                                 + String(self.count()))

    def check_overlap(self) raises:
        """Tensors' bytes [offset, offset + size) must not intersect (a Q8_0 tensor's
        size counts its blocks, a 16-bit one's 2 bytes a value). Every tensor lies inside the file by now, so no end
        overflows."""
        var order = List[Int]()
        for i in range(self.count()):
            order.append(i)

        def before(a: Int, b: Int) {imm} -> Bool:
            return self.offset[a] < self.offset[b]

        sort(Span(order), before)
        for k in range(1, len(order)):
            var p = order[k - 1]
            if self.offset[order[k]] < self.offset[p] + self.bytes_of(p):
                raise file_error(self.path, "tensors " + self.name(p) + " and " + self.name(order[k]) + " overlap")


def read_tensor_infos(mut cur: Cursor, n_tensors: Int) raises -> GgufTensors:
    """The tensor table, in file order; a name given twice is refused."""
    var t = GgufTensors(cur.path, cur.data, cur.size, n_tensors)
    for i in range(n_tensors):
        var name_at = cur.string("tensor name")
        var name_len = cur.off - name_at
        var name = string_from(cur.data.unsafe_offset(name_at), name_len)
        if t.names.find(cur.data.unsafe_offset(name_at), name_len) >= 0:
            raise file_error(cur.path, "tensor " + name + " appears twice")
        var n_dims = Int(cur.u32(name))
        if n_dims > 4:
            raise file_error(cur.path, "tensor " + name + " has " + String(n_dims) + " dimensions")
        t.ndims.append(n_dims)
        for j in range(4):
            t.dims.append(cur.u64(name) if j < n_dims else UInt64(0))
        t.ttype.append(Int(cur.u32(name)))
        t.offset.append(cur.u64(name))
        t.used.append(False)
        t.name_at.append(name_at)
        t.name_len.append(name_len)
        t.names.insert(cur.data.unsafe_offset(name_at), name_len, i, False)
    return t^


def gguf_weights(mut t: GgufTensors, c: Config) raises -> Weights:
    var d = c.dim
    var kv = c.kv_dim()
    var hd = c.hidden_dim
    var w = Weights(t.data.unsafe_bitcast[Float32]())
    w.token_embedding = t.matrix("token_embd.weight", c.vocab_size, d)
    w.rms_final = t.get("output_norm.weight", d)
    w.wcls = w.token_embedding if c.shared_classifier else t.matrix("output.weight", c.vocab_size, d)
    for l in range(c.n_layers):
        var blk = "blk." + String(l) + "."
        w.rms_att.append(t.get(blk + "attn_norm.weight", d))
        w.wq.append(t.matrix(blk + "attn_q.weight", d, d))
        w.wk.append(t.matrix(blk + "attn_k.weight", kv, d))
        w.wv.append(t.matrix(blk + "attn_v.weight", kv, d))
        w.wo.append(t.matrix(blk + "attn_output.weight", d, d))
        w.rms_ffn.append(t.get(blk + "ffn_norm.weight", d))
        w.w1.append(t.matrix(blk + "ffn_gate.weight", hd, d))
        w.w2.append(t.matrix(blk + "ffn_down.weight", d, hd))
        w.w3.append(t.matrix(blk + "ffn_up.weight", hd, d))
    t.check_unused(c.n_layers)
    t.check_overlap()
    return w^


def read_gguf(path: String, var file: MappedFile) raises -> Model:
    var cur = Cursor(file.data, file.size, path)
    var n_tensors = 0
    var n_kv = 0
    read_gguf_header(cur, n_tensors, n_kv)
    var found = read_gguf_keys(cur, n_kv)
    var tensors = read_tensor_infos(cur, n_tensors)

    var arch = found[K_ARCH].copy()
    if arch.vtype != 8 or not bytes_equal(file.data.unsafe_offset(arch.off + 8), Int(rd_u64(file.data, arch.off)), "llama"):
        raise file_error(path, "general.architecture is not 'llama'")
    var align = gguf_int_key(path, file.data, found[K_ALIGN], "general.alignment", 32)
    if align <= 0 or (align & (align - 1)) != 0 or align > 65536:
        raise file_error(path, "general.alignment=" + String(align) + " is not a power of two up to 65536")
    tensors.align = align
    tensors.data_start = (cur.off + align - 1) // align * align

    var c = gguf_config(path, file.data, found, tensors.find("output.weight") < 0)
    var m = Model(c^, file^)
    m.weights = gguf_weights(tensors, m.config)
    m.vocab = gguf_vocab(path, m.file.data, found[K_TOKENS], found[K_SCORES], found[K_TYPES])
    m.has_vocab = True
    return m^


def gguf_vocab(path: String, data: BPtr, tokens: KvValue, scores: KvValue, types: KvValue) raises -> Vocab:
    """The embedded tokenizer (arrays already bounds-checked): U+2581 spells a
    space; the control tokens <s> and </s> are llama2.c's "\n<s>\n" and "\n</s>\n".
    Checked like tokenizer.bin."""
    var v = Vocab()
    var use_types = types.vtype == 9 and gguf_is_int(types.etype) and types.count == tokens.count
    var tsize = gguf_scalar_size(types.etype) if use_types else 0
    var ssize = gguf_scalar_size(scores.etype)
    var piece = List[UInt8]()
    var at = tokens.off
    for i in range(tokens.count):
        var n = Int(rd_u64(data, at))
        var text = data.unsafe_offset(at + 8)
        at += 8 + n
        var score = gguf_float_at(data, scores.off + i * ssize, scores.etype)
        piece.clear()
        var control = use_types and gguf_int_at(data, types.off + i * tsize, types.etype) == 3
        if control and (bytes_equal(text, n, "<s>") or bytes_equal(text, n, "</s>")):
            piece.append(10)
            for j in range(n):
                piece.append(text.unsafe_load(j))
            piece.append(10)
        else:
            var j = 0
            while j < n:
                if j + 2 < n and text.unsafe_load(j) == 0xE2 and text.unsafe_load(j + 1) == 0x96 and text.unsafe_load(j + 2) == 0x81:
                    piece.append(32)
                    j += 3
                else:
                    piece.append(text.unsafe_load(j))
                    j += 1
        v.add(BPtr(unsafe_from_address=Int(piece.unsafe_ptr())), len(piece), score)
        v.max_token_length = max(v.max_token_length, len(piece))
    _ = piece^
    v.check(path)
    return v^


# ----------------------------------------------------------------------------
# tokenizer.bin


def read_tokenizer(path: String, vocab_size: Int) raises -> Vocab:
    """tokenizer.bin: int32 max_token_length, then per token float32 score, int32
    length, bytes; exactly `vocab_size` tokens, nothing after them."""
    var file = MappedFile(path)
    var p = file.data
    var size = file.size
    if size < 4:
        file.close()
        raise file_error(path, "truncated: no max_token_length header")
    var max_len = rd_i32(p, 0)
    if max_len < 1 or max_len > MAX_TOKEN_LENGTH:
        file.close()
        raise file_error(path, "max_token_length=" + String(max_len) + " outside 1.." + String(MAX_TOKEN_LENGTH))
    var v = Vocab()
    v.max_token_length = max_len
    var off = 4
    for i in range(vocab_size):
        if off + 8 > size:
            file.close()
            raise file_error(path, "has only " + String(i) + " tokens, the model's vocabulary is " + String(vocab_size))
        var score = rd_f32(p, off)
        var n = rd_i32(p, off + 4)
        off += 8
        if n < 0 or n > max_len:
            file.close()
            raise file_error(path, "token " + String(i) + " has length " + String(n) + ", outside 0.." + String(max_len))
        if off + n > size:
            file.close()
            raise file_error(path, "truncated inside token " + String(i))
        v.add(p.unsafe_offset(off), n, score)
        off += n
    if off != size:
        file.close()
        raise file_error(path, "has " + String(size - off) + " bytes after token " + String(vocab_size - 1)
                         + ": its vocabulary is larger than the model's " + String(vocab_size))
    file.close()
    v.check(path)
    return v^
