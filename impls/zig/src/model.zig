//! What a model file holds once read (config, weights, vocabulary) and the checks every reader
//! applies to it (docs/port-contract.md, sections 4 and 5). The readers are checkpoint.zig
//! (llama2.c v0/v1, tokenizer.bin) and gguf.zig.

const std = @import("std");
const Allocator = std.mem.Allocator;

// ----------------------------------------------------------------------------
// Refusing a file: readers return error.BadFile and leave the one-line problem in a Diag, so
// that main prints `error: <path>: <problem>` and exits 3, and tests can look at the problem.

pub const ReadError = error{ BadFile, OutOfMemory };

pub const Diag = struct {
    path: []const u8 = "",
    buf: [512]u8 = undefined,
    len: usize = 0,

    pub fn fail(d: *Diag, path: []const u8, comptime fmt: []const u8, args: anytype) error{BadFile} {
        d.path = path;
        var w: std.Io.Writer = .fixed(&d.buf);
        w.print(fmt, args) catch {}; // a problem longer than the buffer is cut short
        d.len = w.end;
        // names read from the file must not split the error line
        for (d.buf[0..d.len]) |*ch| {
            if (ch.* == '\n' or ch.* == '\r') ch.* = ' ';
        }
        return error.BadFile;
    }

    pub fn problem(d: *const Diag) []const u8 {
        return d.buf[0..d.len];
    }
};

// ----------------------------------------------------------------------------
// Config: the header values, checked against the contract's limits before anything is sized
// from them

pub const MAX_DIM = 65536;
pub const MAX_HIDDEN = 262144;
pub const MAX_LAYERS = 1024;
pub const MAX_VOCAB = 1 << 20;
pub const MAX_SEQ = 65536;
pub const MAX_KV_BYTES: u64 = 4 << 30;

pub const Config = struct {
    dim: usize, // transformer dimension
    hidden_dim: usize, // for ffn layers
    n_layers: usize, // number of layers
    n_heads: usize, // number of query heads
    n_kv_heads: usize, // number of key/value heads (can be < query heads because of multiquery)
    vocab_size: usize, // vocabulary size, usually 32000 for Llama 2 tokenizers
    seq_len: usize, // max sequence length
    shared_classifier: bool, // the classifier reuses token_embedding
    // what a GGUF may state (contract 3); a .bin states none of them and gets these defaults
    rope_theta: f32 = 10000, // RoPE base
    norm_eps: f32 = 1e-5, // rmsnorm's epsilon
    bos: u32 = 1, // encode's first id, and the id that stops generation
    eos: u32 = 2, // encode's eos id

    pub fn headSize(c: Config) usize {
        return c.dim / c.n_heads;
    }
    pub fn kvDim(c: Config) usize {
        return c.n_kv_heads * c.headSize();
    }
};

/// Header values as read, wide enough that no file can overflow them before validation.
pub const RawConfig = struct { dim: i64, hidden_dim: i64, n_layers: i64, n_heads: i64, n_kv_heads: i64, vocab_size: i64, seq_len: i64 };

/// Checks a header against the contract before anything is sized from it.
pub fn validateConfig(diag: *Diag, path: []const u8, r: RawConfig, shared: bool) error{BadFile}!Config {
    inline for (.{ "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len" }) |name| {
        const v = @field(r, name);
        if (v <= 0) return diag.fail(path, "header value {s}={d} must be positive", .{ name, v });
    }
    const limits = .{ .{ "dim", MAX_DIM }, .{ "hidden_dim", MAX_HIDDEN }, .{ "n_layers", MAX_LAYERS }, .{ "vocab_size", MAX_VOCAB }, .{ "seq_len", MAX_SEQ } };
    inline for (limits) |l| {
        const v = @field(r, l[0]);
        if (v > l[1]) return diag.fail(path, "header value {s}={d} exceeds the limit {d}", .{ l[0], v, l[1] });
    }
    if (r.n_heads > r.dim) return diag.fail(path, "header value n_heads={d} exceeds the limit {d}", .{ r.n_heads, r.dim });
    if (@mod(r.dim, r.n_heads) != 0) return diag.fail(path, "dim={d} is not a multiple of n_heads={d}", .{ r.dim, r.n_heads });
    const head_size = @divExact(r.dim, r.n_heads);
    if (@mod(head_size, 2) != 0) return diag.fail(path, "head_size={d} must be even for RoPE", .{head_size});
    if (r.n_kv_heads > r.n_heads or @mod(r.n_heads, r.n_kv_heads) != 0)
        return diag.fail(path, "n_heads={d} is not a multiple of n_kv_heads={d}", .{ r.n_heads, r.n_kv_heads });
    return .{
        .dim = @intCast(r.dim),
        .hidden_dim = @intCast(r.hidden_dim),
        .n_layers = @intCast(r.n_layers),
        .n_heads = @intCast(r.n_heads),
        .n_kv_heads = @intCast(r.n_kv_heads),
        .vocab_size = @intCast(r.vocab_size),
        .seq_len = @intCast(r.seq_len),
        .shared_classifier = shared,
    };
}

/// The KV cache holds the positions a run can reach (`rows`: the clamped steps, or the -k
/// ids), not the whole context, so that a short run on a long-context model stays small; the
/// contract's limit applies to that size. Every factor is bounded, so the product fits in 64 bits.
pub fn checkKvCache(diag: *Diag, path: []const u8, c: Config, rows: usize) error{BadFile}!void {
    const kv_bytes: u64 = @as(u64, c.n_layers) * rows * c.kvDim() * 2 * 4;
    if (kv_bytes > MAX_KV_BYTES) return diag.fail(path, "KV cache of {d} bytes for {d} positions exceeds the 4 GiB limit", .{ kv_bytes, rows });
}

// ----------------------------------------------------------------------------
// Weights: fp32 tensors and Q8_0 blocks used in place in the file's bytes (checkpoint.loadFile)

/// GGUF data may sit at any 4-byte offset from an unaligned start, so tensors are declared
/// align(1); the kernels load them unaligned anyway.
pub const Tensor = []align(1) const f32;

/// GGUF's Q8_0 (ggml type 8): 32 weights sharing one fp16 scale, value_i = fp32(d) * qs_i.
/// Blocks are packed 34 bytes apart, so the scale of most blocks is not 2-byte aligned: it is
/// kept as bytes and decoded with an unaligned read, and the struct's alignment is 1.
pub const Q8Block = extern struct {
    d: [2]u8, // fp16, little-endian
    qs: [Q8_BLOCK]i8,

    pub fn scale(b: *const Q8Block) f32 {
        return @as(f16, @bitCast(std.mem.readInt(u16, &b.d, .little)));
    }
};
pub const Q8_BLOCK = 32;
comptime {
    std.debug.assert(@sizeOf(Q8Block) == 34 and @alignOf(Q8Block) == 1);
}

/// A (rows, cols) weight matrix, row-major, as the file stores it: fp32, or Q8_0 with cols / 32
/// blocks per row (GGUF only; the reader checks that cols is a multiple of 32), or 16-bit
/// values (GGUF only): IEEE half (F16), or the top half of a float32 (BF16, kept as its bits).
pub const Matrix = union(enum) {
    f32: Tensor,
    q8_0: []const Q8Block,
    f16: []align(1) const f16,
    bf16: []align(1) const u16,
};

pub const LayerWeights = struct {
    rms_att: Tensor, // (dim)
    wq: Matrix, // (dim, n_heads * head_size)
    wk: Matrix, // (kv_dim, dim)
    wv: Matrix, // (kv_dim, dim)
    wo: Matrix, // (n_heads * head_size, dim)
    rms_ffn: Tensor, // (dim)
    w1: Matrix, // (hidden_dim, dim)
    w2: Matrix, // (dim, hidden_dim)
    w3: Matrix, // (hidden_dim, dim)
};

pub const TransformerWeights = struct {
    token_embedding: Matrix, // (vocab_size, dim)
    layers: []LayerWeights, // (n_layers)
    rms_final: Tensor, // (dim)
    wcls: Matrix, // (vocab_size, dim): token_embedding when shared
};

/// `count` floats at byte `off` of the file's bytes, which the caller has bounds-checked.
pub fn tensorAt(data: []const u8, off: usize, count: usize) Tensor {
    const p: [*]align(1) const f32 = @ptrCast(data.ptr + off);
    return p[0..count];
}

/// `count` Q8_0 blocks at byte `off` of the file's bytes, which the caller has bounds-checked.
pub fn q8BlocksAt(data: []const u8, off: usize, count: usize) []const Q8Block {
    const p: [*]const Q8Block = @ptrCast(data.ptr + off);
    return p[0..count];
}

/// `count` 16-bit values at byte `off` of the file's bytes, which the caller has bounds-checked.
pub fn halvesAt(comptime T: type, data: []const u8, off: usize, count: usize) []align(1) const T {
    const p: [*]align(1) const T = @ptrCast(data.ptr + off);
    return p[0..count];
}

/// A model file as read: the weights point into `file`, its bytes in memory.
pub const Checkpoint = struct {
    config: Config,
    weights: TransformerWeights,
    file: []const u8,
    vocab: ?Vocab, // GGUF embeds its tokenizer
};

// ----------------------------------------------------------------------------
// Vocabulary: the pieces and merge scores of a tokenizer, from tokenizer.bin or a GGUF

pub const MIN_VOCAB = 259; // <unk>, BOS, EOS and the 256 byte tokens

pub const Vocab = struct {
    pieces: []const []const u8,
    scores: []const f32,
    max_token_length: usize,
};

/// The rules every vocabulary follows, wherever it comes from: <unk>, BOS, EOS and the 256 byte
/// tokens that byte fallback emits; the " " piece that starts every prompt; finite scores, which
/// the merge rule compares.
pub fn checkVocab(diag: *Diag, path: []const u8, v: Vocab) error{BadFile}!void {
    if (v.pieces.len < MIN_VOCAB)
        return diag.fail(path, "has {d} tokens; a tokenizer needs at least {d} (<unk>, BOS, EOS and 256 byte tokens)", .{ v.pieces.len, MIN_VOCAB });
    var space = false;
    for (v.pieces, v.scores, 0..) |piece, score, i| {
        if (std.math.isNan(score)) return diag.fail(path, "token {d} has a NaN score", .{i});
        if (std.math.isInf(score)) return diag.fail(path, "token {d} has an infinite score", .{i});
        space = space or std.mem.eql(u8, piece, " ");
    }
    if (!space) return diag.fail(path, "has no piece \" \" (the dummy prefix that starts every prompt)", .{});
}
