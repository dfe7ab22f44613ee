# What a model file holds once read (config, weights, vocabulary) and what every
# part of the port shares: the error convention, raw memory and files through libc,
# little-endian reads, and a byte-string hash table. The readers are formats.mojo;
# inference is forward.mojo and the modules it imports.

from std.collections import List
from std.ffi import ErrNo, external_call, get_errno
from std.memory import Pointer, bitcast
from std.os import getenv
from std.sys.info import CompilationTarget

comptime FPtr = Pointer[Float32, MutUntrackedOrigin]
comptime BPtr = Pointer[UInt8, MutUntrackedOrigin]
comptime KPtr = Pointer[UInt64, MutUntrackedOrigin]
comptime QPtr = Pointer[Int8, MutUntrackedOrigin]  # Q8_0 quants

comptime EXIT_RUNTIME = 1
comptime EXIT_USAGE = 2
comptime EXIT_BAD_FILE = 3

# The contract's limits (section 4): checked before anything is sized from a header.
comptime MAX_DIM = 65536
comptime MAX_HIDDEN = 262144
comptime MAX_LAYERS = 1024
comptime MAX_VOCAB = 1048576
comptime MAX_SEQ = 65536
comptime MAX_KV_BYTES = 4 << 30
comptime MIN_VOCAB = 259  # <unk>, BOS, EOS and the 256 byte tokens

# ----------------------------------------------------------------------------
# Errors: an Error's text starts with its exit code digit, so that `main` can
# print one `error:` line and exit with the contract's code.


def usage_error(msg: String) -> Error:
    return Error(String(EXIT_USAGE) + msg)


def file_error(path: String, problem: String) -> Error:
    # names read from the file (keys, tensors) must not split the error line
    var line = (path + ": " + problem).replace("\n", " ").replace("\r", " ")
    return Error(String(EXIT_BAD_FILE) + line)


def runtime_error(msg: String) -> Error:
    return Error(String(EXIT_RUNTIME) + msg)


# ----------------------------------------------------------------------------
# Raw memory and files, through libc (open/pread/mmap/write), so that weights are
# mapped or read straight into place, never copied twice, and every failure is
# ours to report.


def alloc_floats(n: Int) raises -> FPtr:
    """Zeroed float32 buffer; a failed allocation is a runtime error (exit 1)."""
    var p = external_call["calloc", FPtr](max(n, 1), 4)
    if Int(p) == 0:
        raise runtime_error("cannot allocate " + String(n * 4) + " bytes")
    return p


def alloc_keys(n: Int) raises -> KPtr:
    var p = external_call["calloc", KPtr](max(n, 1), 8)
    if Int(p) == 0:
        raise runtime_error("cannot allocate " + String(n * 8) + " bytes")
    return p


def alloc_quants(n: Int) raises -> QPtr:
    var p = external_call["calloc", QPtr](max(n, 1), 1)
    if Int(p) == 0:
        raise runtime_error("cannot allocate " + String(n) + " bytes")
    return p


def free_floats(p: FPtr):
    external_call["free", NoneType](p)


def free_quants(p: QPtr):
    external_call["free", NoneType](p)


def c_path(path: String) -> List[UInt8]:
    """NUL-terminated bytes of `path` for libc."""
    var out = List[UInt8]()
    for b in path.as_bytes():
        out.append(b)
    out.append(0)
    return out^


def string_from(p: BPtr, n: Int) -> String:
    """A String holding the n bytes at p (for messages: invalid UTF-8 is kept as is)."""
    return String(StringSlice(unsafe_from_utf8=Span(unsafe_ptr=p, length=n)))


def write_all(fd: Int32, data: BPtr, n: Int) -> Bool:
    var done = 0
    while done < n:
        var w = external_call["write", Int](fd, data.unsafe_offset(done), n - done)
        if w <= 0:
            return False
        done += w
    return True


def write_string(fd: Int32, s: String):
    var bytes = s.as_bytes()
    _ = write_all(fd, BPtr(unsafe_from_address=Int(bytes.unsafe_ptr())), len(bytes))


# mmap/madvise constants: PROT_* and MAP_PRIVATE are the same on Linux and macOS;
# MAP_ANONYMOUS and MADV_HUGEPAGE are used on Linux only, where x86-64 and arm64 agree.
comptime PROT_READ = 1
comptime PROT_WRITE = 2
comptime MAP_PRIVATE = 2
comptime MAP_ANONYMOUS = 0x20
comptime MADV_HUGEPAGE = 14


def want_huge_pages() -> Bool:
    """Where the kernel gives transparent huge pages only on request (Linux's usual
    "madvise" setting), a file mapping stays in 4 KiB pages and a forward pass over
    hundreds of MB of weights misses the TLB on nearly every page; an anonymous copy
    asked for huge pages avoids that (measured in the port's README).
    POLYLLAMA_HUGEPAGES=0 keeps the file mapping, for before/after runs."""
    comptime if not CompilationTarget.is_linux():
        return False
    return getenv("POLYLLAMA_HUGEPAGES") != "0"


def read_exact(path: String, fd: Int32, dst: BPtr, n: Int) raises:
    """The file's first n bytes into dst."""
    var got = 0
    while got < n:
        var r = external_call["pread", Int](fd, dst.unsafe_offset(got), n - got, Int64(got))
        if r < 0 and get_errno() == ErrNo.EINTR:
            continue
        if r < 0:
            raise file_error(path, "cannot read: " + String(get_errno()))
        if r == 0:
            raise file_error(path, "cannot read: unexpected end of file")
        got += r


def map_file(path: String, fd: Int32, size: Int) raises -> BPtr:
    var p = external_call["mmap", BPtr](Int(0), size, Int32(PROT_READ), Int32(MAP_PRIVATE), fd, Int64(0))
    if Int(p) == -1 or Int(p) == 0:
        raise file_error(path, "cannot map the file into memory")
    return p


def load_huge(path: String, fd: Int32, size: Int) raises -> BPtr:
    """The whole file read into an anonymous mapping asked for huge pages. read(),
    not a copy out of a file mapping, so that only one copy is ever resident."""
    var p = external_call["mmap", BPtr](
        Int(0), size, Int32(PROT_READ | PROT_WRITE), Int32(MAP_PRIVATE | MAP_ANONYMOUS), Int32(-1), Int64(0)
    )
    if Int(p) == -1 or Int(p) == 0:
        raise file_error(path, "cannot allocate " + String(size) + " bytes: " + String(get_errno()))
    # a refusal (THP disabled, an old kernel) only costs speed
    _ = external_call["madvise", Int32](p, size, Int32(MADV_HUGEPAGE))
    try:
        read_exact(path, fd, p, size)
    except e:
        _ = external_call["munmap", Int32](p, size)
        raise e^
    # read-only from here on, as the file mapping is
    _ = external_call["mprotect", Int32](p, size, Int32(PROT_READ))
    return p


struct MappedFile(Movable):
    """A whole file mapped read-only (an empty file gets a 1-byte stand-in). The
    descriptor stays open for `load_huge_pages`, until it or close() runs."""

    var data: BPtr
    var size: Int
    var fd: Int32

    def __init__(out self, path: String) raises:
        var cpath = c_path(path)
        var fd = external_call["open", Int32](
            cpath.unsafe_ptr().unsafe_bitcast[NoneType](), Int32(0), Int32(0)
        )
        if fd < 0:
            if external_call["access", Int32](cpath.unsafe_ptr(), Int32(0)) != 0:
                raise file_error(path, "cannot open: no such file")
            raise file_error(path, "cannot open: permission denied")
        var probe = List[UInt8](length=1, fill=0)
        # read() fails on a directory, which open() accepts
        if external_call["pread", Int](fd, probe.unsafe_ptr(), 1, Int64(0)) < 0:
            _ = external_call["close", Int32](fd)
            raise file_error(path, "cannot open: is a directory or unreadable")
        var size = Int(external_call["lseek", Int64](fd, Int64(0), Int32(2)))
        if size < 0:
            _ = external_call["close", Int32](fd)
            raise file_error(path, "cannot open: not a regular file")
        self.size = size
        self.fd = fd
        # an empty file maps nothing: a 1-byte stand-in keeps the pointer valid
        self.data = external_call["calloc", BPtr](1, 8)
        if size > 0:
            external_call["free", NoneType](self.data)
            try:
                self.data = map_file(path, fd, size)
            except e:
                _ = external_call["close", Int32](fd)
                raise e^
        _ = cpath^  # the C strings lived through the calls that used them
        _ = probe^

    def load_huge_pages(mut self, path: String) raises:
        """On Linux, unless POLYLLAMA_HUGEPAGES=0, the file's bytes are read into an
        anonymous mapping asked for huge pages, which then replaces the file mapping
        (of which only the pages the header checks looked at were ever read). Either
        way the descriptor is closed: the bytes stay where they are from here on."""
        if self.size > 0 and want_huge_pages():
            var p = load_huge(path, self.fd, self.size)
            _ = external_call["munmap", Int32](self.data, self.size)
            self.data = p
        _ = external_call["close", Int32](self.fd)
        self.fd = -1

    def close(mut self):
        if self.size > 0:
            _ = external_call["munmap", Int32](self.data, self.size)
        elif self.size == 0:
            external_call["free", NoneType](self.data)
        self.size = -1
        if self.fd >= 0:
            _ = external_call["close", Int32](self.fd)
            self.fd = -1


# Little-endian readers at arbitrary (unaligned) byte offsets.


@always_inline
def rd_u8(p: BPtr, off: Int) -> Int:
    return Int(p.unsafe_load(off))


@always_inline
def rd_u32(p: BPtr, off: Int) -> UInt32:
    return (
        UInt32(p.unsafe_load(off))
        | (UInt32(p.unsafe_load(off + 1)) << 8)
        | (UInt32(p.unsafe_load(off + 2)) << 16)
        | (UInt32(p.unsafe_load(off + 3)) << 24)
    )


@always_inline
def rd_i32(p: BPtr, off: Int) -> Int:
    return Int(bitcast[DType.int32, 1](rd_u32(p, off)))


@always_inline
def rd_u64(p: BPtr, off: Int) -> UInt64:
    return UInt64(rd_u32(p, off)) | (UInt64(rd_u32(p, off + 4)) << 32)


@always_inline
def rd_f32(p: BPtr, off: Int) -> Float32:
    return bitcast[DType.float32, 1](rd_u32(p, off))


# ----------------------------------------------------------------------------
# Model: config, weights, vocabulary, and the mapped file they live in


struct Config(Copyable, Movable):
    var dim: Int  # transformer dimension
    var hidden_dim: Int  # FFN hidden dimension
    var n_layers: Int
    var n_heads: Int  # query heads
    var n_kv_heads: Int  # key/value heads (< n_heads: grouped-query attention)
    var vocab_size: Int
    var seq_len: Int  # maximum sequence length
    var shared_classifier: Bool  # logits = token_embedding @ x
    # what a GGUF file may state (contract section 4); a .bin has llama2.c's values
    var rope_theta: Float32  # RoPE base
    var norm_eps: Float32  # rmsnorm's epsilon
    var bos_id: Int  # encode's first id, and the id that stops generation
    var eos_id: Int  # encode's eos id

    def __init__(out self, dim: Int, hidden_dim: Int, n_layers: Int, n_heads: Int, n_kv_heads: Int,
                 vocab_size: Int, seq_len: Int, shared_classifier: Bool, rope_theta: Float32 = 10000.0,
                 norm_eps: Float32 = 1e-5, bos_id: Int = 1, eos_id: Int = 2):
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.shared_classifier = shared_classifier
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.bos_id = bos_id
        self.eos_id = eos_id

    def head_size(self) -> Int:
        return self.dim // self.n_heads

    def kv_dim(self) -> Int:
        return self.n_kv_heads * self.head_size()

    def describe(self) -> String:
        return (
            "dim=" + String(self.dim) + " hidden_dim=" + String(self.hidden_dim)
            + " n_layers=" + String(self.n_layers) + " n_heads=" + String(self.n_heads)
            + " n_kv_heads=" + String(self.n_kv_heads) + " vocab_size="
            + String(self.vocab_size) + " seq_len=" + String(self.seq_len)
        )

    def validate(self, path: String) raises:
        """The contract's header checks, in 64-bit, before any size is trusted."""
        var names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
        var values = [self.dim, self.hidden_dim, self.n_layers, self.n_heads,
                      self.n_kv_heads, self.vocab_size, self.seq_len]
        for i in range(len(values)):
            if values[i] <= 0:
                raise file_error(path, "header value " + names[i] + "=" + String(values[i]) + " must be positive")
        var limits = [MAX_DIM, MAX_HIDDEN, MAX_LAYERS, self.dim, -1, MAX_VOCAB, MAX_SEQ]
        for i in range(len(values)):
            if limits[i] >= 0 and values[i] > limits[i]:
                raise file_error(path, "header value " + names[i] + "=" + String(values[i])
                                 + " exceeds the limit " + String(limits[i]))
        if self.dim % self.n_heads != 0:
            raise file_error(path, "dim=" + String(self.dim) + " is not a multiple of n_heads=" + String(self.n_heads))
        if self.head_size() % 2 != 0:
            raise file_error(path, "head_size=" + String(self.head_size()) + " must be even for RoPE")
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads != 0:
            raise file_error(path, "n_heads=" + String(self.n_heads) + " is not a multiple of n_kv_heads="
                             + String(self.n_kv_heads))

    def check_kv_cache(self, path: String, rows: Int) raises:
        """The KV cache a run of `rows` positions needs (contract 3: sized for the
        run, not the context), within the contract's 4 GiB; 64-bit arithmetic on
        validated header values cannot overflow."""
        var kv_bytes = self.n_layers * rows * self.kv_dim() * 2 * 4
        if kv_bytes > MAX_KV_BYTES:
            raise file_error(path, "KV cache of " + String(kv_bytes) + " bytes for " + String(rows)
                             + " positions exceeds the 4 GiB limit")

    def weight_floats(self) -> Int:
        """Floats of every weight tensor (the classifier only when unshared)."""
        var d = self.dim
        var h = self.hidden_dim
        var kv = self.kv_dim()
        var per_layer = 2 * d + d * d * 2 + kv * d * 2 + h * d * 3
        var n = self.vocab_size * d + self.n_layers * per_layer + d
        if not self.shared_classifier:
            n += self.vocab_size * d
        return n


# A matrix's storage: its ggml tensor type (a .bin's are all F32).
comptime W_F32 = 0
comptime W_F16 = 1
comptime W_Q8_0 = 8
comptime W_BF16 = 30


struct Matrix(TrivialRegisterPassable):
    """A weight matrix where it lies in the loaded file: float32 rows, GGUF Q8_0
    blocks (q8_0.mojo) or 16-bit F16/BF16 rows (half.mojo)."""

    var data: BPtr
    var kind: Int  # W_F32, W_F16, W_Q8_0 or W_BF16
    var q8: Bool

    def __init__(out self, data: BPtr, kind: Int):
        self.data = data
        self.kind = kind
        self.q8 = kind == W_Q8_0

    @staticmethod
    def f32(p: FPtr) -> Matrix:
        return Matrix(p.unsafe_bitcast[UInt8](), W_F32)

    def floats(self) -> FPtr:
        return self.data.unsafe_bitcast[Float32]()



struct Weights(Movable):
    """Pointers into the loaded file; per-layer tensors get one pointer per layer
    because GGUF stores each layer's matrices separately. GGUF may give any matrix
    as Q8_0, each on its own; norms are always float32."""

    var token_embedding: Matrix  # (vocab, dim)
    var rms_att: List[FPtr]  # (layer) -> (dim)
    var wq: List[Matrix]  # (layer) -> (n_heads * head_size, dim)
    var wk: List[Matrix]  # (layer) -> (n_kv_heads * head_size, dim)
    var wv: List[Matrix]  # (layer) -> (n_kv_heads * head_size, dim)
    var wo: List[Matrix]  # (layer) -> (dim, n_heads * head_size)
    var rms_ffn: List[FPtr]  # (layer) -> (dim)
    var w1: List[Matrix]  # (layer) -> (hidden_dim, dim)
    var w2: List[Matrix]  # (layer) -> (dim, hidden_dim)
    var w3: List[Matrix]  # (layer) -> (hidden_dim, dim)
    var rms_final: FPtr  # (dim)
    var wcls: Matrix  # (vocab, dim): token_embedding when shared

    def __init__(out self, base: FPtr):
        var null = base  # placeholder until the reader sets each pointer
        self.token_embedding = Matrix.f32(null)
        self.rms_att = List[FPtr]()
        self.wq = List[Matrix]()
        self.wk = List[Matrix]()
        self.wv = List[Matrix]()
        self.wo = List[Matrix]()
        self.rms_ffn = List[FPtr]()
        self.w1 = List[Matrix]()
        self.w2 = List[Matrix]()
        self.w3 = List[Matrix]()
        self.rms_final = null
        self.wcls = Matrix.f32(null)


struct Vocab(Movable):
    """Token pieces (raw bytes, all in one buffer) and their merge scores."""

    var bytes: List[UInt8]
    var offsets: List[Int]  # (vocab + 1): piece i is bytes[offsets[i] : offsets[i + 1]]
    var scores: List[Float32]  # (vocab)
    var max_token_length: Int

    def __init__(out self):
        self.bytes = List[UInt8]()
        self.offsets = List[Int]()
        self.offsets.append(0)
        self.scores = List[Float32]()
        self.max_token_length = 1

    def size(self) -> Int:
        return len(self.scores)

    def add(mut self, src: BPtr, n: Int, score: Float32):
        for i in range(n):
            self.bytes.append(src.unsafe_load(i))
        self.offsets.append(len(self.bytes))
        self.scores.append(score)

    def check(self, path: String) raises:
        """The rules every vocabulary follows, from tokenizer.bin or GGUF alike: <unk>,
        BOS, EOS and the 256 byte tokens that byte fallback emits; the " " piece that
        starts every prompt; finite scores, which the merge rule compares."""
        if self.size() < MIN_VOCAB:
            raise file_error(path, "has " + String(self.size()) + " tokens; a tokenizer needs at least "
                             + String(MIN_VOCAB) + " (<unk>, BOS, EOS and 256 byte tokens)")
        var space = False
        for i in range(self.size()):
            var s = self.scores[i]
            if s != s:
                raise file_error(path, "token " + String(i) + " has a NaN score")
            if s - s != 0:  # inf - inf is NaN
                raise file_error(path, "token " + String(i) + " has an infinite score")
            var at = self.offsets[i]
            space = space or (self.offsets[i + 1] - at == 1 and self.bytes[at] == 32)
        if not space:
            raise file_error(path, "has no piece \" \" (the dummy prefix that starts every prompt)")


struct Model(Movable):
    var config: Config
    var weights: Weights
    var file: MappedFile
    var vocab: Vocab  # filled only by GGUF, which embeds its tokenizer
    var has_vocab: Bool

    def __init__(out self, var config: Config, var file: MappedFile):
        self.config = config^
        self.weights = Weights(file.data.unsafe_bitcast[Float32]())
        self.file = file^
        self.vocab = Vocab()
        self.has_vocab = False


# ----------------------------------------------------------------------------
# A byte-string hash table, for the tokenizer's pieces and GGUF's keys and names


struct ByteTable(Movable):
    """Open-addressing hash table from byte strings (kept where they live: in the
    mapped file or a Vocab) to ids."""

    var slots: List[Int]  # entry index, or -1
    var key_addr: List[Int]
    var key_len: List[Int]
    var value: List[Int]
    var mask: Int

    def __init__(out self, expected: Int):
        var cap = 16
        while cap < 2 * expected:
            cap *= 2
        self.slots = List[Int](length=cap, fill=-1)
        self.key_addr = List[Int]()
        self.key_len = List[Int]()
        self.value = List[Int]()
        self.mask = cap - 1

    @staticmethod
    def hash(p: BPtr, n: Int) -> Int:
        var h = UInt64(0xCBF29CE484222325)  # FNV-1a
        for i in range(n):
            h = (h ^ UInt64(p.unsafe_load(i))) * UInt64(0x100000001B3)
        return Int(h >> 1)

    def _slot(self, p: BPtr, n: Int) -> Int:
        var s = ByteTable.hash(p, n) & self.mask
        while True:
            var e = self.slots[s]
            if e < 0:
                return s
            if self.key_len[e] == n:
                var k = BPtr(unsafe_from_address=self.key_addr[e])
                var same = True
                for i in range(n):
                    if k.unsafe_load(i) != p.unsafe_load(i):
                        same = False
                        break
                if same:
                    return s
            s = (s + 1) & self.mask

    def find(self, p: BPtr, n: Int) -> Int:
        var e = self.slots[self._slot(p, n)]
        return self.value[e] if e >= 0 else -1

    def insert(mut self, p: BPtr, n: Int, value: Int, replace: Bool):
        """Adds key -> value; an existing key keeps its value unless `replace`."""
        if 2 * (len(self.value) + 1) > self.mask + 1:
            self._grow()
        var s = self._slot(p, n)
        var e = self.slots[s]
        if e >= 0:
            if replace:
                self.value[e] = value
            return
        self.slots[s] = len(self.value)
        self.key_addr.append(Int(p))
        self.key_len.append(n)
        self.value.append(value)

    def _grow(mut self):
        var cap = 2 * (self.mask + 1)
        self.mask = cap - 1
        self.slots = List[Int](length=cap, fill=-1)
        for e in range(len(self.value)):
            var s = ByteTable.hash(BPtr(unsafe_from_address=self.key_addr[e]), self.key_len[e]) & self.mask
            while self.slots[s] >= 0:
                s = (s + 1) & self.mask
            self.slots[s] = e
