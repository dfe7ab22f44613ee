//! GGUF v2/v3 with llama.cpp's `llama` names, the tokenizer embedded; norms F32, every matrix
//! F32, F16, BF16 or Q8_0, tensor by tensor (a Q8_0 file keeps a matrix F32 when its rows are
//! not a multiple of 32 long). The hyperparameters a file may state (RoPE base, norm epsilon,
//! BOS and EOS ids) are read with llama.cpp's defaults; sizes and offsets are 64-bit.
//! Every count, length and offset is checked against the bytes that remain before it is used,
//! and the files llama.cpp's loader refuses are refused here too (contract section 4).

const std = @import("std");
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const Diag = model.Diag;
const Config = model.Config;
const Tensor = model.Tensor;
const Matrix = model.Matrix;
const ReadError = model.ReadError;

const GGUF_MAX_ENTRIES = 65536;
const DEFAULT_ALIGNMENT = 32;
const TYPE_F32 = 0;
const TYPE_F16 = 1;
const TYPE_Q8_0 = 8;
const TYPE_BF16 = 30;
const Q8_BLOCK_BYTES = @sizeOf(model.Q8Block);
pub const SPACE_MARK = "\u{2581}"; // SentencePiece's visible space

// ----------------------------------------------------------------------------
// Reading values

/// A bounds-checked reader over the file's bytes.
const Cursor = struct {
    diag: *Diag,
    path: []const u8,
    data: []const u8,
    off: usize = 0,

    fn need(self: *Cursor, n: u64, what: []const u8) error{BadFile}!usize {
        if (n > self.data.len - self.off)
            return self.diag.fail(self.path, "truncated or corrupt: {s} runs past the end of the file", .{what});
        return @intCast(n);
    }
    fn int(self: *Cursor, comptime T: type, what: []const u8) error{BadFile}!T {
        _ = try self.need(@sizeOf(T), what);
        const v = std.mem.readInt(T, self.data[self.off..][0..@sizeOf(T)], .little);
        self.off += @sizeOf(T);
        return v;
    }
    fn string(self: *Cursor, what: []const u8) error{BadFile}![]const u8 {
        const n = try self.need(try self.int(u64, what), what);
        const s = self.data[self.off..][0..n];
        self.off += n;
        return s;
    }
};

const GgufType = enum(u32) { u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, bool = 7, string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12, _ };

fn scalarSize(t: GgufType) ?usize {
    return switch (t) {
        .u8, .i8, .bool => 1,
        .u16, .i16 => 2,
        .u32, .i32, .f32 => 4,
        .u64, .i64, .f64 => 8,
        else => null,
    };
}

/// A scalar at `off` as a float (for scores) or a saturated integer (for header values).
fn scalarAt(data: []const u8, off: usize, t: GgufType) union(enum) { int: i64, float: f64 } {
    const p = data[off..];
    return switch (t) {
        .u8, .bool => .{ .int = p[0] },
        .i8 => .{ .int = @as(i8, @bitCast(p[0])) },
        .u16 => .{ .int = std.mem.readInt(u16, p[0..2], .little) },
        .i16 => .{ .int = std.mem.readInt(i16, p[0..2], .little) },
        .u32 => .{ .int = std.mem.readInt(u32, p[0..4], .little) },
        .i32 => .{ .int = std.mem.readInt(i32, p[0..4], .little) },
        .u64 => .{ .int = std.math.cast(i64, std.mem.readInt(u64, p[0..8], .little)) orelse std.math.maxInt(i64) },
        .i64 => .{ .int = std.mem.readInt(i64, p[0..8], .little) },
        .f32 => .{ .float = @as(f32, @bitCast(std.mem.readInt(u32, p[0..4], .little))) },
        .f64 => .{ .float = @bitCast(std.mem.readInt(u64, p[0..8], .little)) },
        else => unreachable, // callers pass scalar types only
    };
}

/// Where a key's value sits in the file; arrays are read lazily once the header is checked.
const GgufValue = struct {
    vtype: GgufType,
    off: usize, // the value itself, or an array's first element
    elem: GgufType = .u8, // arrays only
    count: usize = 0, // arrays only
};

/// Skips over one value, checking that it fits in the file.
fn skipValue(cur: *Cursor, vtype: GgufType, what: []const u8) error{BadFile}!GgufValue {
    if (scalarSize(vtype)) |n| {
        const v: GgufValue = .{ .vtype = vtype, .off = cur.off };
        cur.off += try cur.need(n, what);
        return v;
    }
    switch (vtype) {
        .string => {
            const v: GgufValue = .{ .vtype = vtype, .off = cur.off };
            _ = try cur.string(what);
            return v;
        },
        .array => {
            const elem: GgufType = @enumFromInt(try cur.int(u32, what));
            const count = try cur.int(u64, what);
            var v: GgufValue = .{ .vtype = vtype, .off = 0, .elem = elem };
            if (scalarSize(elem)) |n| {
                const bytes = std.math.mul(u64, count, n) catch std.math.maxInt(u64);
                v.off = cur.off;
                cur.off += try cur.need(bytes, what);
            } else if (elem == .string) {
                _ = try cur.need(std.math.mul(u64, count, 8) catch std.math.maxInt(u64), what);
                v.off = cur.off;
                for (0..@intCast(count)) |_| _ = try cur.string(what);
            } else return cur.diag.fail(cur.path, "{s}: unsupported array element type {d}", .{ what, @intFromEnum(elem) });
            v.count = @intCast(count);
            return v;
        },
        else => return cur.diag.fail(cur.path, "{s}: unknown value type {d}", .{ what, @intFromEnum(vtype) }),
    }
}

fn stringAt(data: []const u8, off: usize) []const u8 {
    const n: usize = @intCast(std.mem.readInt(u64, data[off..][0..8], .little));
    return data[off + 8 ..][0..n];
}

// ----------------------------------------------------------------------------
// Header, key-value section and tensor infos

const Counts = struct { n_tensors: usize, n_kv: usize };

fn readHeader(cur: *Cursor) error{BadFile}!Counts {
    const version = try cur.int(u32, "version");
    if (version != 2 and version != 3) return cur.diag.fail(cur.path, "unsupported GGUF version {d} (2 and 3 are read)", .{version});
    const n_tensors = try cur.int(u64, "tensor count");
    const n_kv = try cur.int(u64, "kv count");
    if (n_tensors > GGUF_MAX_ENTRIES or n_kv > GGUF_MAX_ENTRIES)
        return cur.diag.fail(cur.path, "implausible counts: {d} tensors, {d} keys (limit {d})", .{ n_tensors, n_kv, GGUF_MAX_ENTRIES });
    return .{ .n_tensors = @intCast(n_tensors), .n_kv = @intCast(n_kv) };
}

/// The keys this reader uses.
const GgufKeys = struct {
    architecture: ?GgufValue = null,
    alignment: ?GgufValue = null,
    dim: ?GgufValue = null,
    hidden_dim: ?GgufValue = null,
    n_layers: ?GgufValue = null,
    n_heads: ?GgufValue = null,
    n_kv_heads: ?GgufValue = null,
    seq_len: ?GgufValue = null,
    tokens: ?GgufValue = null,
    scores: ?GgufValue = null,
    token_types: ?GgufValue = null,
    rope_theta: ?GgufValue = null,
    norm_eps: ?GgufValue = null,
    rope_dims: ?GgufValue = null,
    bos: ?GgufValue = null,
    eos: ?GgufValue = null,
    rope_scaling: ?GgufValue = null,
    experts: ?GgufValue = null,

    const names = .{
        .{ "general.architecture", "architecture" },        .{ "general.alignment", "alignment" },
        .{ "llama.embedding_length", "dim" },               .{ "llama.feed_forward_length", "hidden_dim" },
        .{ "llama.block_count", "n_layers" },               .{ "llama.attention.head_count", "n_heads" },
        .{ "llama.attention.head_count_kv", "n_kv_heads" }, .{ "llama.context_length", "seq_len" },
        .{ "tokenizer.ggml.tokens", "tokens" },             .{ "tokenizer.ggml.scores", "scores" },
        .{ "tokenizer.ggml.token_type", "token_types" },     .{ "llama.rope.freq_base", "rope_theta" },
        .{ "llama.attention.layer_norm_rms_epsilon", "norm_eps" }, .{ "llama.rope.dimension_count", "rope_dims" },
        .{ "tokenizer.ggml.bos_token_id", "bos" },          .{ "tokenizer.ggml.eos_token_id", "eos" },
        .{ "llama.rope.scaling.type", "rope_scaling" },     .{ "llama.expert_count", "experts" },
    };
};

/// Reads the metadata. llama.cpp refuses an empty key and a key given twice, and so does this
/// reader: which of two values would be meant is anyone's guess.
fn readKeys(gpa: Allocator, cur: *Cursor, n_kv: usize) ReadError!GgufKeys {
    var seen: std.StringHashMapUnmanaged(void) = .empty;
    defer seen.deinit(gpa);
    try seen.ensureTotalCapacity(gpa, @intCast(n_kv));
    var keys: GgufKeys = .{};
    for (0..n_kv) |i| {
        const key = try cur.string("key");
        if (key.len == 0) return cur.diag.fail(cur.path, "key {d} of {d} is empty", .{ i + 1, n_kv });
        if (seen.getOrPutAssumeCapacity(key).found_existing) return cur.diag.fail(cur.path, "key {s} appears twice", .{key});
        const vtype: GgufType = @enumFromInt(try cur.int(u32, "value type"));
        const v = try skipValue(cur, vtype, key);
        inline for (GgufKeys.names) |n| {
            if (std.mem.eql(u8, key, n[0])) @field(keys, n[1]) = v;
        }
    }
    return keys;
}

/// An integer-valued key (any integer type; a bool, a float or a string is the wrong kind, as in
/// the reference), or `default` when absent.
fn intKey(diag: *Diag, path: []const u8, data: []const u8, v: ?GgufValue, key: []const u8, default: ?i64) error{BadFile}!i64 {
    const val = v orelse return default orelse diag.fail(path, "missing required key {s}", .{key});
    if (scalarSize(val.vtype) == null or val.vtype == .bool) return diag.fail(path, "key {s} must be an integer", .{key});
    return switch (scalarAt(data, val.off, val.vtype)) {
        .int => |i| i,
        .float => diag.fail(path, "key {s} must be an integer", .{key}),
    };
}

/// A float-valued key (any numeric type: llama.cpp's writers use f32, a hand-made file may
/// give an integer), or `default` when absent. A bool or a string is the wrong kind.
fn floatKey(diag: *Diag, path: []const u8, data: []const u8, v: ?GgufValue, key: []const u8, default: f64) error{BadFile}!f64 {
    const val = v orelse return default;
    if (scalarSize(val.vtype) == null or val.vtype == .bool) return diag.fail(path, "key {s} must be a number (it has value type {d})", .{ key, @intFromEnum(val.vtype) });
    return switch (scalarAt(data, val.off, val.vtype)) {
        .int => |i| @floatFromInt(i),
        .float => |f| f,
    };
}

/// The hyperparameters contract 3 reads from the file, each refused (naming its key) when of
/// the wrong kind or out of range, and the features this architecture does not compute.
fn readHyper(diag: *Diag, path: []const u8, data: []const u8, keys: GgufKeys, c: *Config) error{BadFile}!void {
    const theta = try floatKey(diag, path, data, keys.rope_theta, "llama.rope.freq_base", 10000);
    if (!std.math.isFinite(theta) or theta <= 1 or !std.math.isFinite(@as(f32, @floatCast(theta))))
        return diag.fail(path, "key llama.rope.freq_base={d} is out of range (finite, above 1)", .{theta});
    const eps = try floatKey(diag, path, data, keys.norm_eps, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    if (!std.math.isFinite(eps) or eps <= 0 or eps >= 1 or @as(f32, @floatCast(eps)) == 0)
        return diag.fail(path, "key llama.attention.layer_norm_rms_epsilon={d} is out of range (finite, above 0, below 1)", .{eps});
    const head_size: i64 = @intCast(c.headSize());
    const rope_dims = try intKey(diag, path, data, keys.rope_dims, "llama.rope.dimension_count", head_size);
    if (rope_dims != head_size)
        return diag.fail(path, "key llama.rope.dimension_count={d} differs from head_size={d}: partial rotation is not computed", .{ rope_dims, head_size });
    const vocab: i64 = @intCast(c.vocab_size);
    const bos = try intKey(diag, path, data, keys.bos, "tokenizer.ggml.bos_token_id", 1);
    if (bos < 0 or bos >= vocab) return diag.fail(path, "key tokenizer.ggml.bos_token_id={d} is outside the vocabulary [0, {d})", .{ bos, vocab });
    const eos = try intKey(diag, path, data, keys.eos, "tokenizer.ggml.eos_token_id", 2);
    if (eos < 0 or eos >= vocab) return diag.fail(path, "key tokenizer.ggml.eos_token_id={d} is outside the vocabulary [0, {d})", .{ eos, vocab });
    if (keys.rope_scaling) |v| {
        if (v.vtype != .string) return diag.fail(path, "key llama.rope.scaling.type must be a string", .{});
        const kind = stringAt(data, v.off);
        if (!std.mem.eql(u8, kind, "none")) return diag.fail(path, "key llama.rope.scaling.type is '{s}': only 'none' is computed", .{kind});
    }
    const experts = try intKey(diag, path, data, keys.experts, "llama.expert_count", 0);
    if (experts > 0) return diag.fail(path, "key llama.expert_count={d}: mixture-of-experts models are not computed", .{experts});
    c.rope_theta = @floatCast(theta);
    c.norm_eps = @floatCast(eps);
    c.bos = @intCast(bos);
    c.eos = @intCast(eos);
}

const TensorInfo = struct {
    name: []const u8,
    n_dims: u32,
    dims: [4]u64,
    ttype: u32,
    offset: u64,
    used: bool = false,
    nbytes: u64 = 0, // its extent in the data, known once it is used
};

/// The tensor infos by name; a name given twice is refused.
fn readTensorInfos(gpa: Allocator, cur: *Cursor, n_tensors: usize) ReadError!TensorTable {
    var table: TensorTable = .{ .diag = cur.diag, .path = cur.path, .data = cur.data, .infos = try gpa.alloc(TensorInfo, n_tensors) };
    try table.index.ensureTotalCapacity(gpa, @intCast(n_tensors));
    for (table.infos, 0..) |*t, i| {
        t.* = .{ .name = try cur.string("tensor name"), .n_dims = 0, .dims = undefined, .ttype = 0, .offset = 0 };
        const gop = table.index.getOrPutAssumeCapacity(t.name);
        if (gop.found_existing) return cur.diag.fail(cur.path, "tensor {s} appears twice", .{t.name});
        gop.value_ptr.* = @intCast(i);
        t.n_dims = try cur.int(u32, "tensor dims");
        if (t.n_dims > 4) return cur.diag.fail(cur.path, "tensor {s} has {d} dimensions", .{ t.name, t.n_dims });
        for (t.dims[0..t.n_dims]) |*d| d.* = try cur.int(u64, "tensor dims");
        t.ttype = try cur.int(u32, "tensor type");
        t.offset = try cur.int(u64, "tensor offset");
    }
    return table;
}

// ----------------------------------------------------------------------------
// The model: config from the keys, weights from the tensor table, the embedded tokenizer

pub fn read(gpa: Allocator, diag: *Diag, path: []const u8, data: []const u8) ReadError!model.Checkpoint {
    var cur: Cursor = .{ .diag = diag, .path = path, .data = data, .off = 4 };
    const counts = try readHeader(&cur);
    const keys = try readKeys(gpa, &cur, counts.n_kv);
    var table = try readTensorInfos(gpa, &cur, counts.n_tensors);
    defer table.deinit(gpa);

    const arch_ok = if (keys.architecture) |a| a.vtype == .string and std.mem.eql(u8, stringAt(data, a.off), "llama") else false;
    if (!arch_ok) return diag.fail(path, "general.architecture is not 'llama'", .{});
    const alignment = try intKey(diag, path, data, keys.alignment, "general.alignment", DEFAULT_ALIGNMENT);
    if (alignment <= 0 or alignment > 65536 or !std.math.isPowerOfTwo(alignment))
        return diag.fail(path, "general.alignment={d} is not a power of two up to 65536", .{alignment});
    table.alignment = @intCast(alignment);
    table.data_start = std.mem.alignForward(usize, cur.off, @intCast(alignment));

    const tokens = keys.tokens orelse return diag.fail(path, "missing tokenizer.ggml.tokens", .{});
    if (tokens.vtype != .array or tokens.elem != .string or tokens.count == 0) return diag.fail(path, "missing tokenizer.ggml.tokens", .{});
    const scores = keys.scores orelse return diag.fail(path, "tokenizer.ggml.scores missing or not one per token", .{});
    if (scores.vtype != .array or scalarSize(scores.elem) == null or scores.count != tokens.count)
        return diag.fail(path, "tokenizer.ggml.scores missing or not one per token", .{});

    var c = try readConfig(diag, path, data, keys, tokens.count, !table.index.contains("output.weight"));
    try readHyper(diag, path, data, keys, &c);
    const w = try table.weights(gpa, c);
    const vocab = try readVocab(gpa, diag, path, data, tokens, scores, keys.token_types);
    return .{ .config = c, .weights = w, .file = data, .vocab = vocab };
}

fn readConfig(diag: *Diag, path: []const u8, data: []const u8, keys: GgufKeys, vocab_size: usize, shared: bool) error{BadFile}!Config {
    const n_heads = try intKey(diag, path, data, keys.n_heads, "llama.attention.head_count", null);
    return model.validateConfig(diag, path, .{
        .dim = try intKey(diag, path, data, keys.dim, "llama.embedding_length", null),
        .hidden_dim = try intKey(diag, path, data, keys.hidden_dim, "llama.feed_forward_length", null),
        .n_layers = try intKey(diag, path, data, keys.n_layers, "llama.block_count", null),
        .n_heads = n_heads,
        .n_kv_heads = try intKey(diag, path, data, keys.n_kv_heads, "llama.attention.head_count_kv", n_heads),
        .vocab_size = @intCast(vocab_size),
        .seq_len = try intKey(diag, path, data, keys.seq_len, "llama.context_length", null),
    }, shared);
}

/// The tensor infos, turned into weights: each tensor found by name and checked for type,
/// shape, alignment and bounds, then the table as a whole for tensors that are not the model's
/// and for overlapping data.
const TensorTable = struct {
    diag: *Diag,
    path: []const u8,
    data: []const u8,
    infos: []TensorInfo,
    index: std.StringHashMapUnmanaged(u32) = .empty, // name -> infos index
    alignment: u64 = DEFAULT_ALIGNMENT,
    data_start: usize = 0,

    fn deinit(t: *TensorTable, gpa: Allocator) void {
        t.index.deinit(gpa);
        gpa.free(t.infos);
    }

    fn weights(t: *TensorTable, gpa: Allocator, c: Config) ReadError!model.TransformerWeights {
        const d = c.dim;
        const kv = c.kvDim();
        const h = c.hidden_dim;
        var w: model.TransformerWeights = undefined;
        w.token_embedding = try t.matrix("token_embd.weight", c.vocab_size, d);
        w.rms_final = try t.vector("output_norm.weight", d);
        w.wcls = if (c.shared_classifier) w.token_embedding else try t.matrix("output.weight", c.vocab_size, d);
        w.layers = try gpa.alloc(model.LayerWeights, c.n_layers);
        for (w.layers, 0..) |*lw, l| {
            var buf: [64]u8 = undefined;
            lw.rms_att = try t.vector(layerName(&buf, l, "attn_norm"), d);
            lw.wq = try t.matrix(layerName(&buf, l, "attn_q"), d, d);
            lw.wk = try t.matrix(layerName(&buf, l, "attn_k"), kv, d);
            lw.wv = try t.matrix(layerName(&buf, l, "attn_v"), kv, d);
            lw.wo = try t.matrix(layerName(&buf, l, "attn_output"), d, d);
            lw.rms_ffn = try t.vector(layerName(&buf, l, "ffn_norm"), d);
            lw.w1 = try t.matrix(layerName(&buf, l, "ffn_gate"), h, d);
            lw.w2 = try t.matrix(layerName(&buf, l, "ffn_down"), d, h);
            lw.w3 = try t.matrix(layerName(&buf, l, "ffn_up"), h, d);
        }
        try t.checkUnused(c.n_layers);
        try t.checkOverlap(gpa);
        return w;
    }

    /// A norm: F32 only.
    fn vector(t: *TensorTable, name: []const u8, n: usize) error{BadFile}!Tensor {
        const info = try t.locate(name, &.{n}, false);
        return model.tensorAt(t.data, t.data_start + @as(usize, @intCast(info.offset)), n);
    }

    /// A (rows, cols) weight: F32, F16, BF16, or Q8_0 when cols is a multiple of 32.
    fn matrix(t: *TensorTable, name: []const u8, rows: usize, cols: usize) error{BadFile}!Matrix {
        const info = try t.locate(name, &.{ rows, cols }, true);
        const off = t.data_start + @as(usize, @intCast(info.offset));
        return switch (info.ttype) {
            TYPE_Q8_0 => .{ .q8_0 = model.q8BlocksAt(t.data, off, rows * (cols / model.Q8_BLOCK)) },
            TYPE_F16 => .{ .f16 = model.halvesAt(f16, t.data, off, rows * cols) },
            TYPE_BF16 => .{ .bf16 = model.halvesAt(u16, t.data, off, rows * cols) },
            else => .{ .f32 = model.tensorAt(t.data, off, rows * cols) },
        };
    }

    /// The named tensor, checked for type (F16, BF16 and Q8_0 only where `quantizable`), GGUF
    /// dims = reversed `shape`, alignment and extent inside the file, all in 64 bits; marked used.
    fn locate(t: *TensorTable, name: []const u8, shape: []const usize, quantizable: bool) error{BadFile}!*TensorInfo {
        const i = t.index.get(name) orelse return t.diag.fail(t.path, "missing tensor {s}", .{name});
        const info = &t.infos[i];
        const matrix_type = info.ttype == TYPE_Q8_0 or info.ttype == TYPE_F16 or info.ttype == TYPE_BF16;
        if (info.ttype != TYPE_F32 and !(quantizable and matrix_type)) {
            if (quantizable) return t.diag.fail(t.path, "tensor {s} has type {d}; only F32 (0), F16 (1), BF16 (30) and Q8_0 (8) are supported", .{ name, info.ttype });
            if (matrix_type) return t.diag.fail(t.path, "tensor {s} is {s}; only matrices may be, norms are F32", .{ name, typeName(info.ttype) });
            return t.diag.fail(t.path, "tensor {s} has type {d}; only F32 (0) is supported", .{ name, info.ttype });
        }
        var ok = info.n_dims == shape.len;
        var count: u64 = 1;
        for (shape, 0..) |s, k| {
            if (ok and info.dims[shape.len - 1 - k] != s) ok = false;
            count *= s;
        }
        if (!ok) return t.diag.fail(t.path, "tensor {s} has dims {any}, expected the reverse of {any}", .{ name, info.dims[0..info.n_dims], shape });
        const row = shape[shape.len - 1];
        if (info.ttype == TYPE_Q8_0 and row % model.Q8_BLOCK != 0)
            return t.diag.fail(t.path, "tensor {s} is Q8_0 with rows of {d} values, not a multiple of the block size {d}", .{ name, row, model.Q8_BLOCK });
        if (info.offset % t.alignment != 0)
            return t.diag.fail(t.path, "tensor {s} has offset {d}, not a multiple of general.alignment={d}", .{ name, info.offset, t.alignment });
        // F32 data is read as floats, Q8_0 blocks byte by byte, 16-bit values unaligned
        const nbytes: u64 = switch (info.ttype) {
            TYPE_Q8_0 => count / model.Q8_BLOCK * Q8_BLOCK_BYTES,
            TYPE_F16, TYPE_BF16 => count * 2,
            else => count * 4,
        };
        const float_misaligned = info.ttype == TYPE_F32 and info.offset % 4 != 0;
        const room: u64 = if (t.data_start <= t.data.len) t.data.len - t.data_start else 0;
        if (float_misaligned or info.offset > room or nbytes > room - info.offset)
            return t.diag.fail(t.path, "tensor {s} lies outside the file", .{name});
        info.used = true;
        info.nbytes = nbytes;
        return info;
    }

    /// llama.cpp insists that the file holds exactly the tensors of its block_count.
    fn checkUnused(t: *const TensorTable, n_layers: usize) error{BadFile}!void {
        var used: usize = 0;
        for (t.infos) |info| used += @intFromBool(info.used);
        for (t.infos) |info| {
            if (!info.used) return t.diag.fail(t.path, "unexpected tensor {s}: a {d}-layer model has {d} tensors, the file {d}", .{ info.name, n_layers, used, t.infos.len });
        }
    }

    /// Refuses tensors whose bytes [offset, offset + nbytes) intersect. Every tensor is used
    /// (checkUnused) and so inside the file by now, and no end overflows.
    fn checkOverlap(t: *const TensorTable, gpa: Allocator) ReadError!void {
        const order = try gpa.alloc(u32, t.infos.len);
        defer gpa.free(order);
        for (order, 0..) |*o, i| o.* = @intCast(i);
        std.mem.sort(u32, order, t.infos, offsetLess);
        for (order[0..order.len -| 1], order[@min(1, order.len)..]) |a, b| {
            const prev = t.infos[a];
            if (t.infos[b].offset < prev.offset + prev.nbytes)
                return t.diag.fail(t.path, "tensors {s} and {s} overlap", .{ prev.name, t.infos[b].name });
        }
    }

    fn offsetLess(infos: []const TensorInfo, a: u32, b: u32) bool {
        return infos[a].offset < infos[b].offset;
    }
};

fn typeName(ttype: u32) []const u8 {
    return switch (ttype) {
        TYPE_F16 => "F16",
        TYPE_BF16 => "BF16",
        TYPE_Q8_0 => "Q8_0",
        else => "F32",
    };
}

fn layerName(buf: []u8, layer: usize, comptime kind: []const u8) []const u8 {
    return std.fmt.bufPrint(buf, "blk.{d}." ++ kind ++ ".weight", .{layer}) catch unreachable; // 64 bytes always fit
}

/// The embedded tokenizer: U+2581 spells a space; the control tokens <s> and </s> are
/// llama2.c's "\n<s>\n" and "\n</s>\n". Checked like tokenizer.bin.
fn readVocab(gpa: Allocator, diag: *Diag, path: []const u8, data: []const u8, tokens: GgufValue, scores: GgufValue, types: ?GgufValue) ReadError!model.Vocab {
    const n = tokens.count;
    const pieces = try gpa.alloc([]const u8, n);
    const score_out = try gpa.alloc(f32, n);
    // token types are used only when there is one per token, of an integer type
    const use_types = if (types) |t| t.vtype == .array and t.count == n and scalarSize(t.elem) != null else false;
    var off = tokens.off;
    var max_len: usize = 1;
    for (0..n) |i| {
        const text = stringAt(data, off);
        off += 8 + text.len;
        const ttype: i64 = if (use_types) switch (scalarAt(data, types.?.off + i * scalarSize(types.?.elem).?, types.?.elem)) {
            .int => |v| v,
            .float => |v| if (std.math.isFinite(v) and @abs(v) < 1e18) @intFromFloat(v) else -1,
        } else -1;
        pieces[i] = if (ttype == 3 and std.mem.eql(u8, text, "<s>"))
            "\n<s>\n"
        else if (ttype == 3 and std.mem.eql(u8, text, "</s>"))
            "\n</s>\n"
        else
            try std.mem.replaceOwned(u8, gpa, text, SPACE_MARK, " ");
        max_len = @max(max_len, pieces[i].len);
        score_out[i] = switch (scalarAt(data, scores.off + i * scalarSize(scores.elem).?, scores.elem)) {
            .int => |v| @floatFromInt(v),
            .float => |v| @floatCast(v),
        };
    }
    const vocab: model.Vocab = .{ .pieces = pieces, .scores = score_out, .max_token_length = max_len };
    try model.checkVocab(diag, path, vocab);
    return vocab;
}

// ----------------------------------------------------------------------------
// tests: a tiny GGUF written here, then broken one way at a time

const testing = std.testing;

/// A one-layer model (by default dim 8, hidden 16; 2 heads, seq_len 4) with the smallest legal
/// vocabulary: <unk>, <s>, </s>, the 256 byte tokens and "▁", 260 tokens. With `q8`, every
/// matrix whose rows are a multiple of 32 long is Q8_0, as the converter writes them. All
/// allocations are an arena's.
const TinyGguf = struct {
    const Kv = struct { key: []const u8, vtype: GgufType, value: []u8 };
    const Info = struct { name: []const u8, dims: []const u64, ttype: u32, offset: u64 };
    /// `matrices`: the type of every matrix (Q8_0 only where the rows are a multiple of 32 long,
    /// as the converter writes them).
    const Shape = struct { dim: u32 = 8, hidden: u32 = 16, q8: bool = false, matrices: u32 = TYPE_F32 };

    arena: Allocator,
    kvs: std.ArrayList(Kv) = .empty,
    tensors: std.ArrayList(Info) = .empty,
    data_len: u64 = 0,

    fn init(arena: Allocator, shape: Shape) !TinyGguf {
        var g: TinyGguf = .{ .arena = arena };
        try g.addKv("general.architecture", .string, try encodeString(arena, "llama"));
        const Size = struct { []const u8, u32 };
        const sizes = [_]Size{ .{ "llama.embedding_length", shape.dim }, .{ "llama.feed_forward_length", shape.hidden }, .{ "llama.block_count", 1 }, .{ "llama.attention.head_count", 2 }, .{ "llama.context_length", 4 } };
        for (sizes) |entry| {
            var v: [4]u8 = undefined;
            std.mem.writeInt(u32, &v, entry[1], .little);
            try g.addKv(entry[0], .u32, try arena.dupe(u8, &v));
        }
        var tokens: std.ArrayList(u8) = .empty;
        var scores: std.ArrayList(u8) = .empty;
        try appendInt(&tokens, arena, u32, @intFromEnum(GgufType.string));
        try appendInt(&tokens, arena, u64, 260);
        try appendInt(&scores, arena, u32, @intFromEnum(GgufType.f32));
        try appendInt(&scores, arena, u64, 260);
        for (0..260) |i| {
            var buf: [8]u8 = undefined;
            const text = switch (i) {
                0 => "<unk>",
                1 => "<s>",
                2 => "</s>",
                259 => SPACE_MARK,
                else => try std.fmt.bufPrint(&buf, "<0x{X:0>2}>", .{i - 3}),
            };
            try tokens.appendSlice(arena, try encodeString(arena, text));
            try appendInt(&scores, arena, u32, @bitCast(-@as(f32, @floatFromInt(i))));
        }
        try g.addKv("tokenizer.ggml.tokens", .array, tokens.items);
        try g.addKv("tokenizer.ggml.scores", .array, scores.items);
        const d: u64 = shape.dim;
        const h: u64 = shape.hidden;
        const mt: u32 = if (shape.q8) TYPE_Q8_0 else shape.matrices;
        try g.addMatrix("token_embd.weight", d, 260, mt);
        try g.addTensor("output_norm.weight", &.{d});
        try g.addTensor("blk.0.attn_norm.weight", &.{d});
        inline for (.{ "attn_q", "attn_k", "attn_v", "attn_output" }) |name| try g.addMatrix("blk.0." ++ name ++ ".weight", d, d, mt);
        try g.addTensor("blk.0.ffn_norm.weight", &.{d});
        try g.addMatrix("blk.0.ffn_gate.weight", d, h, mt);
        try g.addMatrix("blk.0.ffn_down.weight", h, d, mt);
        try g.addMatrix("blk.0.ffn_up.weight", d, h, mt);
        return g;
    }

    /// A matrix of `rows` rows of `cols` values of type `ttype`, F32 instead of Q8_0 when cols is
    /// not a multiple of 32.
    fn addMatrix(g: *TinyGguf, name: []const u8, cols: u64, rows: u64, ttype: u32) !void {
        const t: u32 = if (ttype == TYPE_Q8_0 and cols % 32 != 0) TYPE_F32 else ttype;
        try g.addTyped(name, try g.arena.dupe(u64, &.{ cols, rows }), t);
    }

    fn addKv(g: *TinyGguf, key: []const u8, vtype: GgufType, value: []u8) !void {
        try g.kvs.append(g.arena, .{ .key = key, .vtype = vtype, .value = value });
    }

    /// A zero F32 tensor (dims innermost first) at the next 32-byte boundary of the data.
    fn addTensor(g: *TinyGguf, name: []const u8, dims: []const u64) !void {
        try g.addTyped(name, try g.arena.dupe(u64, dims), TYPE_F32);
    }

    fn addTyped(g: *TinyGguf, name: []const u8, dims: []const u64, ttype: u32) !void {
        g.data_len = std.mem.alignForward(u64, g.data_len, 32);
        try g.tensors.append(g.arena, .{ .name = name, .dims = dims, .ttype = ttype, .offset = g.data_len });
        var n: u64 = 1;
        for (dims) |d| n *= d;
        g.data_len += switch (ttype) {
            TYPE_Q8_0 => n / 32 * Q8_BLOCK_BYTES,
            TYPE_F16, TYPE_BF16 => n * 2,
            else => n * 4,
        };
    }

    fn tensor(g: *TinyGguf, name: []const u8) *Info {
        for (g.tensors.items) |*t| if (std.mem.eql(u8, t.name, name)) return t;
        unreachable;
    }

    fn kv(g: *TinyGguf, key: []const u8) *Kv {
        for (g.kvs.items) |*e| if (std.mem.eql(u8, e.key, key)) return e;
        unreachable;
    }

    fn bytes(g: *TinyGguf) ![]const u8 {
        var out: std.ArrayList(u8) = .empty;
        try out.appendSlice(g.arena, "GGUF");
        try appendInt(&out, g.arena, u32, 3);
        try appendInt(&out, g.arena, u64, g.tensors.items.len);
        try appendInt(&out, g.arena, u64, g.kvs.items.len);
        for (g.kvs.items) |e| {
            try out.appendSlice(g.arena, try encodeString(g.arena, e.key));
            try appendInt(&out, g.arena, u32, @intFromEnum(e.vtype));
            try out.appendSlice(g.arena, e.value);
        }
        for (g.tensors.items) |t| {
            try out.appendSlice(g.arena, try encodeString(g.arena, t.name));
            try appendInt(&out, g.arena, u32, @intCast(t.dims.len));
            for (t.dims) |d| try appendInt(&out, g.arena, u64, d);
            try appendInt(&out, g.arena, u32, t.ttype);
            try appendInt(&out, g.arena, u64, t.offset);
        }
        try out.appendNTimes(g.arena, 0, std.mem.alignForward(usize, out.items.len, 32) - out.items.len + g.data_len);
        return out.items;
    }

    fn setScore(g: *TinyGguf, i: usize, score: f32) void {
        std.mem.writeInt(u32, g.kv("tokenizer.ggml.scores").value[12 + 4 * i ..][0..4], @bitCast(score), .little);
    }
};

fn appendInt(list: *std.ArrayList(u8), gpa: Allocator, comptime T: type, v: T) !void {
    var buf: [@sizeOf(T)]u8 = undefined;
    std.mem.writeInt(T, &buf, v, .little);
    try list.appendSlice(gpa, &buf);
}

fn encodeString(gpa: Allocator, s: []const u8) ![]u8 {
    var out: std.ArrayList(u8) = .empty;
    try appendInt(&out, gpa, u64, s.len);
    try out.appendSlice(gpa, s);
    return out.items;
}

test "gguf: a tiny model loads, its space piece in place" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    var g = try TinyGguf.init(arena.allocator(), .{});
    var diag: Diag = .{};
    const m = read(arena.allocator(), &diag, "tiny.gguf", try g.bytes()) catch |err| {
        std.debug.print("{s}\n", .{diag.problem()});
        return err;
    };
    try testing.expectEqual(@as(usize, 260), m.config.vocab_size);
    try testing.expect(m.config.shared_classifier);
    try testing.expectEqualStrings(" ", m.vocab.?.pieces[259]);
}

const Breakage = enum { empty_key, duplicate_key, duplicate_tokenizer_key, duplicate_tensor, unknown_tensor, extra_layer_tensor, unaligned_offset, overlap, nan_score, inf_score, no_space_piece };

/// Breaks a valid file one way; returns what the refusal must say.
fn breakGguf(g: *TinyGguf, b: Breakage) ![]const u8 {
    switch (b) {
        .empty_key => g.kv("llama.context_length").key = "",
        .duplicate_key => try g.kvs.append(g.arena, g.kv("llama.block_count").*),
        .duplicate_tokenizer_key => try g.kvs.append(g.arena, g.kv("tokenizer.ggml.scores").*),
        .duplicate_tensor => try g.tensors.append(g.arena, g.tensors.items[3]),
        .unknown_tensor => try g.addTensor("extra.weight", &.{8}),
        .extra_layer_tensor => try g.addTensor("blk.1.attn_norm.weight", &.{8}),
        .unaligned_offset => {
            g.tensors.items[g.tensors.items.len - 1].offset += 4;
            g.data_len += 64;
        },
        .overlap => g.tensors.items[3].offset = g.tensors.items[2].offset,
        .nan_score => g.setScore(5, std.math.nan(f32)),
        .inf_score => g.setScore(7, -std.math.inf(f32)),
        .no_space_piece => {
            const tokens = g.kv("tokenizer.ggml.tokens").value;
            tokens[std.mem.lastIndexOf(u8, tokens, SPACE_MARK).? + 2] = 0x82; // U+2582, not a space
        },
    }
    return switch (b) {
        .empty_key => "is empty",
        .duplicate_key => "key llama.block_count appears twice",
        .duplicate_tokenizer_key => "key tokenizer.ggml.scores appears twice",
        .duplicate_tensor => "tensor blk.0.attn_q.weight appears twice",
        .unknown_tensor => "unexpected tensor extra.weight",
        .extra_layer_tensor => "unexpected tensor blk.1.attn_norm.weight",
        .unaligned_offset => "not a multiple of general.alignment=32",
        .overlap => "overlap",
        .nan_score => "token 5 has a NaN score",
        .inf_score => "token 7 has an infinite score",
        .no_space_piece => "no piece \" \"",
    };
}

test "gguf: files llama.cpp refuses, and tokenizers the contract refuses" {
    for (std.enums.values(Breakage)) |b| {
        var arena: std.heap.ArenaAllocator = .init(testing.allocator);
        defer arena.deinit();
        var g = try TinyGguf.init(arena.allocator(), .{});
        const want = try breakGguf(&g, b);
        var diag: Diag = .{};
        const result = read(arena.allocator(), &diag, "bad.gguf", try g.bytes());
        testing.expectError(error.BadFile, result) catch |err| {
            std.debug.print("{t}: accepted\n", .{b});
            return err;
        };
        try testing.expectEqualStrings("bad.gguf", diag.path);
        if (std.mem.indexOf(u8, diag.problem(), want) == null) {
            std.debug.print("{t}: '{s}' does not say '{s}'\n", .{ b, diag.problem(), want });
            return error.TestUnexpectedResult;
        }
    }
}

test "gguf: Q8_0 matrices load next to F32 ones, blocks packed 34 bytes apart" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    // hidden 48: ffn_down's rows are 48 long, so it stays F32 in a file of Q8_0 matrices
    var g = try TinyGguf.init(arena.allocator(), .{ .dim = 32, .hidden = 48, .q8 = true });
    var diag: Diag = .{};
    const m = read(arena.allocator(), &diag, "q8.gguf", try g.bytes()) catch |err| {
        std.debug.print("{s}\n", .{diag.problem()});
        return err;
    };
    try testing.expectEqual(@as(usize, 260), m.weights.token_embedding.q8_0.len); // one block per row
    try testing.expectEqual(@as(usize, 260), m.weights.wcls.q8_0.len); // shared classifier
    const lw = m.weights.layers[0];
    try testing.expectEqual(@as(usize, 32), lw.wq.q8_0.len);
    try testing.expectEqual(@as(usize, 48), lw.w1.q8_0.len); // 48 rows of 32
    try testing.expectEqual(@as(usize, 48 * 32), lw.w2.f32.len);
    try testing.expectEqual(@as(usize, 32), lw.rms_att.len);
}

const Q8Breakage = enum { row_not_multiple, truncated, overlap, q8_norm, unknown_type };

test "gguf: Q8_0 tensors the reader refuses, each naming the tensor" {
    for (std.enums.values(Q8Breakage)) |b| {
        var arena: std.heap.ArenaAllocator = .init(testing.allocator);
        defer arena.deinit();
        var g = try TinyGguf.init(arena.allocator(), if (b == .row_not_multiple) .{} else .{ .dim = 32, .hidden = 64, .q8 = true });
        const want = switch (b) {
            .row_not_multiple => blk: { // rows of dim = 8 values
                g.tensor("blk.0.attn_q.weight").ttype = TYPE_Q8_0;
                break :blk "tensor blk.0.attn_q.weight is Q8_0 with rows of 8 values, not a multiple of the block size 32";
            },
            .truncated => blk: { // the last tensor's last block one byte short
                std.debug.assert(std.mem.eql(u8, g.tensors.items[g.tensors.items.len - 1].name, "blk.0.ffn_up.weight"));
                g.data_len -= 1;
                break :blk "tensor blk.0.ffn_up.weight lies outside the file";
            },
            .overlap => blk: { // attn_k starts inside attn_q's 32 * 34 bytes, at a 32-byte boundary
                g.tensor("blk.0.attn_k.weight").offset = g.tensor("blk.0.attn_q.weight").offset + 33 * 32;
                break :blk "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap";
            },
            .q8_norm => blk: {
                g.tensor("blk.0.ffn_norm.weight").ttype = TYPE_Q8_0;
                break :blk "tensor blk.0.ffn_norm.weight is Q8_0; only matrices may be, norms are F32";
            },
            .unknown_type => blk: {
                g.tensor("blk.0.attn_v.weight").ttype = 2; // Q4_0
                break :blk "tensor blk.0.attn_v.weight has type 2; only F32 (0), F16 (1), BF16 (30) and Q8_0 (8) are supported";
            },
        };
        var diag: Diag = .{};
        const result = read(arena.allocator(), &diag, "bad.gguf", try g.bytes());
        testing.expectError(error.BadFile, result) catch |err| {
            std.debug.print("{t}: accepted\n", .{b});
            return err;
        };
        if (!std.mem.eql(u8, diag.problem(), want)) {
            std.debug.print("{t}: '{s}' is not '{s}'\n", .{ b, diag.problem(), want });
            return error.TestUnexpectedResult;
        }
    }
}

test "gguf: F16 and BF16 matrices load, 2 bytes a value; a 16-bit norm is refused" {
    inline for (.{ TYPE_F16, TYPE_BF16 }) |ttype| {
        var arena: std.heap.ArenaAllocator = .init(testing.allocator);
        defer arena.deinit();
        var g = try TinyGguf.init(arena.allocator(), .{ .dim = 8, .hidden = 12, .matrices = ttype });
        var diag: Diag = .{};
        const m = read(arena.allocator(), &diag, "h.gguf", try g.bytes()) catch |err| {
            std.debug.print("{s}\n", .{diag.problem()});
            return err;
        };
        const tag = if (ttype == TYPE_F16) "f16" else "bf16";
        try testing.expectEqual(@as(usize, 260 * 8), @field(m.weights.token_embedding, tag).len);
        try testing.expectEqual(@as(usize, 12 * 8), @field(m.weights.layers[0].w2, tag).len);
        // the last tensor one byte short: its 2-byte values, not 4-byte ones, decide
        var short = try TinyGguf.init(arena.allocator(), .{ .dim = 8, .hidden = 12, .matrices = ttype });
        short.data_len -= 1;
        try testing.expectError(error.BadFile, read(arena.allocator(), &diag, "h.gguf", try short.bytes()));
        try testing.expectEqualStrings("tensor blk.0.ffn_up.weight lies outside the file", diag.problem());
        // attn_k placed inside attn_q's 2 * 8 * 8 bytes
        var overlap = try TinyGguf.init(arena.allocator(), .{ .dim = 8, .hidden = 12, .matrices = ttype });
        overlap.tensor("blk.0.attn_k.weight").offset = overlap.tensor("blk.0.attn_q.weight").offset + 96;
        try testing.expectError(error.BadFile, read(arena.allocator(), &diag, "h.gguf", try overlap.bytes()));
        try testing.expectEqualStrings("tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap", diag.problem());
        var norm = try TinyGguf.init(arena.allocator(), .{ .matrices = ttype });
        norm.tensor("blk.0.ffn_norm.weight").ttype = ttype;
        try testing.expectError(error.BadFile, read(arena.allocator(), &diag, "h.gguf", try norm.bytes()));
        const want = if (ttype == TYPE_F16) "tensor blk.0.ffn_norm.weight is F16; only matrices may be, norms are F32" else "tensor blk.0.ffn_norm.weight is BF16; only matrices may be, norms are F32";
        try testing.expectEqualStrings(want, diag.problem());
    }
}

fn scalarBytes(arena: Allocator, comptime T: type, v: T) ![]u8 {
    const U = @Int(.unsigned, @bitSizeOf(T));
    var b: [@sizeOf(T)]u8 = undefined;
    std.mem.writeInt(U, &b, @bitCast(v), .little);
    return arena.dupe(u8, &b);
}

test "gguf: the hyperparameter keys, their defaults, any numeric type" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const a = arena.allocator();
    var diag: Diag = .{};
    var g = try TinyGguf.init(a, .{});
    const d = (try read(a, &diag, "k.gguf", try g.bytes())).config;
    try testing.expectEqual(@as(f32, 10000), d.rope_theta);
    try testing.expectEqual(@as(f32, 1e-5), d.norm_eps);
    try testing.expectEqual(@as(u32, 1), d.bos);
    try testing.expectEqual(@as(u32, 2), d.eos);
    try g.addKv("llama.rope.freq_base", .u32, try scalarBytes(a, u32, 500000)); // an integer type
    try g.addKv("llama.attention.layer_norm_rms_epsilon", .f64, try scalarBytes(a, f64, 1e-6));
    try g.addKv("llama.rope.dimension_count", .u64, try scalarBytes(a, u64, 4)); // head_size 8 / 2
    try g.addKv("tokenizer.ggml.bos_token_id", .u16, try scalarBytes(a, u16, 2));
    try g.addKv("tokenizer.ggml.eos_token_id", .i64, try scalarBytes(a, i64, 1));
    try g.addKv("llama.rope.scaling.type", .string, try encodeString(a, "none"));
    try g.addKv("llama.expert_count", .u32, try scalarBytes(a, u32, 0));
    const c = (try read(a, &diag, "k.gguf", try g.bytes())).config;
    try testing.expectEqual(@as(f32, 500000), c.rope_theta);
    try testing.expectEqual(@as(f32, 1e-6), c.norm_eps);
    try testing.expectEqual(@as(u32, 2), c.bos);
    try testing.expectEqual(@as(u32, 1), c.eos);
}

test "gguf: a hyperparameter of the wrong kind or out of range is refused, naming its key" {
    const Case = struct { key: []const u8, vtype: GgufType, bytes: []const u8 };
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const a = arena.allocator();
    const cases = [_]Case{
        .{ .key = "llama.rope.freq_base", .vtype = .string, .bytes = try encodeString(a, "10000") },
        .{ .key = "llama.rope.freq_base", .vtype = .f32, .bytes = try scalarBytes(a, f32, 1) },
        .{ .key = "llama.rope.freq_base", .vtype = .f32, .bytes = try scalarBytes(a, f32, std.math.inf(f32)) },
        .{ .key = "llama.rope.freq_base", .vtype = .bool, .bytes = try scalarBytes(a, u8, 1) },
        .{ .key = "llama.attention.layer_norm_rms_epsilon", .vtype = .f32, .bytes = try scalarBytes(a, f32, 0) },
        .{ .key = "llama.attention.layer_norm_rms_epsilon", .vtype = .f32, .bytes = try scalarBytes(a, f32, std.math.nan(f32)) },
        .{ .key = "llama.attention.layer_norm_rms_epsilon", .vtype = .i32, .bytes = try scalarBytes(a, i32, 1) },
        .{ .key = "llama.rope.dimension_count", .vtype = .u32, .bytes = try scalarBytes(a, u32, 2) },
        .{ .key = "llama.rope.dimension_count", .vtype = .f32, .bytes = try scalarBytes(a, f32, 4) },
        .{ .key = "llama.rope.scaling.type", .vtype = .string, .bytes = try encodeString(a, "linear") },
        .{ .key = "llama.rope.scaling.type", .vtype = .u32, .bytes = try scalarBytes(a, u32, 0) },
        .{ .key = "llama.expert_count", .vtype = .u32, .bytes = try scalarBytes(a, u32, 8) },
        .{ .key = "tokenizer.ggml.bos_token_id", .vtype = .u32, .bytes = try scalarBytes(a, u32, 260) },
        .{ .key = "tokenizer.ggml.bos_token_id", .vtype = .string, .bytes = try encodeString(a, "1") },
        .{ .key = "tokenizer.ggml.eos_token_id", .vtype = .i32, .bytes = try scalarBytes(a, i32, -1) },
        .{ .key = "tokenizer.ggml.eos_token_id", .vtype = .u64, .bytes = try scalarBytes(a, u64, std.math.maxInt(u64)) },
    };
    for (cases) |case| {
        var g = try TinyGguf.init(a, .{});
        try g.addKv(case.key, case.vtype, try a.dupe(u8, case.bytes));
        var diag: Diag = .{};
        const result = read(a, &diag, "bad.gguf", try g.bytes());
        testing.expectError(error.BadFile, result) catch |err| {
            std.debug.print("{s} ({t}): accepted\n", .{ case.key, case.vtype });
            return err;
        };
        if (std.mem.indexOf(u8, diag.problem(), case.key) == null) {
            std.debug.print("'{s}' does not name {s}\n", .{ diag.problem(), case.key });
            return error.TestUnexpectedResult;
        }
    }
}
