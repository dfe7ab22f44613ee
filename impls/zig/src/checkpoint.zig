//! Model files: mapping or loading them, sniffing the format, llama2.c's v0 and v1 checkpoints, and
//! tokenizer.bin (GGUF is gguf.zig). A v0 and a v1 file differ only in their header and the
//! order of their tensors, so both go through one header reader and one size check.

const std = @import("std");
const builtin = @import("builtin");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const gguf = @import("gguf.zig");
const Diag = model.Diag;
const Config = model.Config;
const LayerWeights = model.LayerWeights;
const TransformerWeights = model.TransformerWeights;
const Tensor = model.Tensor;
const Matrix = model.Matrix;

pub const V1_MAGIC: u32 = 0x616b3432;
const V0_HEADER_BYTES = 28;
const V1_HEADER_BYTES = 256;
pub const MAX_TOKEN_LENGTH = 1024;

// ----------------------------------------------------------------------------
// Files

/// Opens `path`, which must be a regular file, and returns it with its size.
fn openRegular(io: Io, diag: *Diag, path: []const u8) error{BadFile}!struct { Io.File, usize } {
    const file = Io.Dir.cwd().openFile(io, path, .{}) catch |err| return switch (err) {
        error.FileNotFound => diag.fail(path, "cannot open: no such file", .{}),
        error.AccessDenied, error.PermissionDenied => diag.fail(path, "cannot open: permission denied", .{}),
        error.IsDir => diag.fail(path, "cannot open: is a directory", .{}),
        else => diag.fail(path, "cannot open: {t}", .{err}),
    };
    errdefer file.close(io);
    const st = file.stat(io) catch |err| return diag.fail(path, "cannot open: {t}", .{err});
    if (st.kind == .directory) return diag.fail(path, "cannot open: is a directory", .{});
    if (st.kind != .file) return diag.fail(path, "cannot open: not a regular file", .{});
    const len = std.math.cast(usize, st.size) orelse return diag.fail(path, "file too large to map", .{});
    return .{ file, len };
}

/// Maps `path` read-only. An empty file maps to an empty slice (mmap refuses length 0).
pub fn mapFile(io: Io, diag: *Diag, path: []const u8) error{BadFile}![]const u8 {
    const file, const len = try openRegular(io, diag, path);
    defer file.close(io);
    if (len == 0) return &.{};
    var flags: std.posix.MAP = .{ .TYPE = .PRIVATE };
    // fault every page in now, while load_s is counting, rather than during the first token
    if (builtin.os.tag == .linux) flags.POPULATE = true;
    const mem = std.posix.mmap(null, len, .{ .READ = true }, flags, file.handle, 0) catch |err|
        return diag.fail(path, "cannot map: {t}", .{err});
    return mem;
}

/// A checkpoint's bytes, page-aligned and freed with munmap either way. On Linux, unless
/// `huge_pages` is off, they are read into anonymous memory advised to use transparent huge
/// pages: where THP is in `madvise` mode (Debian's default) a file mapping stays in 4 KiB pages,
/// and a forward pass over hundreds of MB of weights then misses the TLB on nearly every page.
/// read() rather than a copy out of a mapping, so that only one copy is ever resident.
pub fn loadFile(io: Io, diag: *Diag, path: []const u8, huge_pages: bool) error{BadFile}![]const u8 {
    if (builtin.os.tag != .linux or !huge_pages) return mapFile(io, diag, path);
    const linux = std.os.linux;
    const file, const len = try openRegular(io, diag, path);
    defer file.close(io);
    if (len == 0) return &.{};
    const mem = std.posix.mmap(null, len, .{ .READ = true, .WRITE = true }, .{ .TYPE = .PRIVATE, .ANONYMOUS = true }, -1, 0) catch |err|
        return diag.fail(path, "cannot allocate {d} bytes: {t}", .{ len, err });
    errdefer std.posix.munmap(mem);
    // before the first write, so that the read faults the pages in huge; a refusal only costs speed
    std.posix.madvise(mem.ptr, len, linux.MADV.HUGEPAGE) catch {};
    const n = file.readPositionalAll(io, mem, 0) catch |err| return diag.fail(path, "cannot read: {t}", .{err});
    if (n != len) return diag.fail(path, "cannot read: the file ended after {d} of its {d} bytes", .{ n, len });
    // read-only from here on, as the file mapping is; were it refused, nothing writes there anyway
    _ = linux.mprotect(mem.ptr, len, .{ .READ = true });
    return mem;
}

fn readI32(data: []const u8, off: usize) i64 {
    return std.mem.readInt(i32, data[off..][0..4], .little);
}

/// Any supported checkpoint, format sniffed from its first bytes; `huge_pages` as in loadFile.
pub fn read(gpa: Allocator, io: Io, diag: *Diag, path: []const u8, huge_pages: bool) model.ReadError!model.Checkpoint {
    const data = try loadFile(io, diag, path, huge_pages);
    if (data.len >= 4 and std.mem.eql(u8, data[0..4], "GGUF")) return gguf.read(gpa, diag, path, data);
    return readLlama2c(gpa, diag, path, data);
}

// ----------------------------------------------------------------------------
// llama2.c v0 and v1

/// What a v0 or v1 header says.
const Header = struct {
    version: u8, // 0 (legacy, no magic) or 1
    size: usize, // bytes before the first tensor
    config: Config,
};

/// A v1 file starts with the magic; anything else is read as v0.
fn readHeader(diag: *Diag, path: []const u8, data: []const u8) error{BadFile}!Header {
    const v1 = data.len >= 4 and std.mem.readInt(u32, data[0..4], .little) == V1_MAGIC;
    const size: usize = if (v1) V1_HEADER_BYTES else V0_HEADER_BYTES;
    if (data.len < size) return diag.fail(path, "truncated: {d} bytes, a v{d} header needs {d}", .{ data.len, @intFromBool(v1), size });
    var shared: bool = undefined;
    var at: usize = 0; // the seven int32 fields
    if (v1) {
        const version = readI32(data, 4);
        if (version != 1) return diag.fail(path, "unsupported llama2.c format version {d} (only 0 and 1 are fp32)", .{version});
        if (data[36] > 1) return diag.fail(path, "shared_classifier flag is {d}, expected 0 or 1", .{data[36]});
        shared = data[36] == 1;
        at = 8;
    }
    var f: [7]i64 = undefined;
    for (&f, 0..) |*v, i| v.* = readI32(data, at + 4 * i);
    if (!v1) {
        // a negative vocab_size flags an unshared classifier (wcls after the RoPE tables)
        shared = f[5] > 0;
        f[5] = if (f[5] < 0) -f[5] else f[5];
    }
    const raw: model.RawConfig = .{ .dim = f[0], .hidden_dim = f[1], .n_layers = f[2], .n_heads = f[3], .n_kv_heads = f[4], .vocab_size = f[5], .seq_len = f[6] };
    return .{ .version = @intFromBool(v1), .size = size, .config = try model.validateConfig(diag, path, raw, shared) };
}

/// Floats of v0's legacy freq_cis_real and freq_cis_imag, (seq_len, head_size / 2) each.
fn ropeTableFloats(c: Config) u64 {
    return @as(u64, c.seq_len) * (c.headSize() / 2) * 2;
}

/// Number of fp32 values every tensor of a config takes (no RoPE tables).
fn weightFloats(c: Config) u64 {
    const d: u64 = c.dim;
    const h: u64 = c.hidden_dim;
    const l: u64 = c.n_layers;
    const kv: u64 = c.kvDim();
    const v: u64 = c.vocab_size;
    var n = v * d + l * d * 2 + d; // embedding, rms_att, rms_ffn, rms_final
    n += l * (d * d * 2 + kv * d * 2); // wq, wo, wk, wv
    n += l * h * d * 3; // w1, w2, w3
    if (!c.shared_classifier) n += v * d;
    return n;
}

fn readLlama2c(gpa: Allocator, diag: *Diag, path: []const u8, data: []const u8) model.ReadError!model.Checkpoint {
    const h = try readHeader(diag, path, data);
    const c = h.config;
    const expected = @as(u64, h.size) + 4 * (weightFloats(c) + if (h.version == 0) ropeTableFloats(c) else 0);
    if (data.len != expected) {
        const kind = if (data.len < expected) "truncated" else "oversized";
        return diag.fail(path, "{s}: file is {d} bytes, the header implies {d}", .{ kind, data.len, expected });
    }
    var lay: Layout = .{ .data = data, .off = h.size, .layers = try gpa.alloc(LayerWeights, c.n_layers) };
    const w = if (h.version == 0) v0Weights(&lay, c) else v1Weights(&lay, c);
    return .{ .config = c, .weights = w, .file = data, .vocab = null };
}

/// Hands out consecutive tensors of a file whose size is already checked; the per-layer tensors
/// are one contiguous block per weight kind.
const Layout = struct {
    data: []const u8,
    off: usize,
    layers: []LayerWeights,

    fn take(self: *Layout, count: usize) Tensor {
        const t = model.tensorAt(self.data, self.off, count);
        self.off += count * 4;
        return t;
    }
    /// (n_layers, rows) block split into per-layer tensors, written into field `name` (a norm's
    /// Tensor or a weight's Matrix, always fp32 in these formats).
    fn takeLayers(self: *Layout, comptime name: []const u8, per_layer: usize) void {
        for (self.layers) |*lw| {
            const t = self.take(per_layer);
            @field(lw, name) = if (@FieldType(LayerWeights, name) == Matrix) .{ .f32 = t } else t;
        }
    }
};

/// run.c's order: the embedding, each per-layer kind, rms_final, the RoPE tables, wcls.
fn v0Weights(lay: *Layout, c: Config) TransformerWeights {
    const d = c.dim;
    const kv = c.kvDim();
    var w: TransformerWeights = undefined;
    w.token_embedding = .{ .f32 = lay.take(c.vocab_size * d) };
    lay.takeLayers("rms_att", d);
    lay.takeLayers("wq", d * d);
    lay.takeLayers("wk", kv * d);
    lay.takeLayers("wv", kv * d);
    lay.takeLayers("wo", d * d);
    lay.takeLayers("rms_ffn", d);
    lay.takeLayers("w1", c.hidden_dim * d);
    lay.takeLayers("w2", d * c.hidden_dim);
    lay.takeLayers("w3", c.hidden_dim * d);
    w.rms_final = lay.take(d);
    lay.off += @intCast(ropeTableFloats(c) * 4); // RoPE is computed instead
    w.wcls = if (c.shared_classifier) w.token_embedding else .{ .f32 = lay.take(c.vocab_size * d) };
    w.layers = lay.layers;
    return w;
}

/// export.py version 1 writes the small vectors first, then the matrices.
fn v1Weights(lay: *Layout, c: Config) TransformerWeights {
    const d = c.dim;
    const kv = c.kvDim();
    var w: TransformerWeights = undefined;
    lay.takeLayers("rms_att", d);
    lay.takeLayers("rms_ffn", d);
    w.rms_final = lay.take(d);
    w.token_embedding = .{ .f32 = lay.take(c.vocab_size * d) };
    lay.takeLayers("wq", d * d);
    lay.takeLayers("wk", kv * d);
    lay.takeLayers("wv", kv * d);
    lay.takeLayers("wo", d * d);
    lay.takeLayers("w1", c.hidden_dim * d);
    lay.takeLayers("w2", d * c.hidden_dim);
    lay.takeLayers("w3", c.hidden_dim * d);
    w.wcls = if (c.shared_classifier) w.token_embedding else .{ .f32 = lay.take(c.vocab_size * d) };
    w.layers = lay.layers;
    return w;
}

// ----------------------------------------------------------------------------
// tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes.
// It must hold exactly the model's `vocab_size` tokens.

pub fn readTokenizer(gpa: Allocator, io: Io, diag: *Diag, path: []const u8, vocab_size: usize) model.ReadError!model.Vocab {
    const data = try mapFile(io, diag, path); // stays mapped: the pieces point into it
    return parseTokenizer(gpa, diag, path, data, vocab_size);
}

pub fn parseTokenizer(gpa: Allocator, diag: *Diag, path: []const u8, data: []const u8, vocab_size: usize) model.ReadError!model.Vocab {
    if (data.len < 4) return diag.fail(path, "truncated: no max_token_length header", .{});
    const max_len = readI32(data, 0);
    if (max_len < 1 or max_len > MAX_TOKEN_LENGTH) return diag.fail(path, "max_token_length={d} outside 1..{d}", .{ max_len, MAX_TOKEN_LENGTH });
    const pieces = try gpa.alloc([]const u8, vocab_size);
    const scores = try gpa.alloc(f32, vocab_size);
    var off: usize = 4;
    for (0..vocab_size) |i| {
        if (data.len - off < 8) return diag.fail(path, "has only {d} tokens, the model's vocabulary is {d}", .{ i, vocab_size });
        scores[i] = @bitCast(std.mem.readInt(u32, data[off..][0..4], .little));
        const len = readI32(data, off + 4);
        off += 8;
        if (len < 0 or len > max_len) return diag.fail(path, "token {d} has length {d}, outside 0..{d}", .{ i, len, max_len });
        const n: usize = @intCast(len);
        if (data.len - off < n) return diag.fail(path, "truncated inside token {d}", .{i});
        pieces[i] = data[off..][0..n];
        off += n;
    }
    if (off != data.len)
        return diag.fail(path, "has {d} bytes after token {d}: its vocabulary is larger than the model's {d}", .{ data.len - off, vocab_size - 1, vocab_size });
    const vocab: model.Vocab = .{ .pieces = pieces, .scores = scores, .max_token_length = @intCast(max_len) };
    try model.checkVocab(diag, path, vocab);
    return vocab;
}

// ----------------------------------------------------------------------------
// tests

const testing = std.testing;

/// tokenizer.bin bytes of the smallest legal vocabulary (<unk>, <s>, </s>, the 256 byte tokens
/// and " "), with `score` at token `at` and `space` as token 259's piece.
fn tinyTokenizer(gpa: Allocator, n: usize, at: usize, score: f32, space: []const u8) ![]const u8 {
    var out: std.ArrayList(u8) = .empty;
    var buf: [8]u8 = undefined;
    std.mem.writeInt(i32, buf[0..4], 8, .little);
    try out.appendSlice(gpa, buf[0..4]);
    for (0..n) |i| {
        const piece = switch (i) {
            0 => "<unk>",
            1 => "\n<s>\n",
            2 => "\n</s>\n",
            259 => space,
            else => try std.fmt.bufPrint(&buf, "<0x{X:0>2}>", .{(i - 3) % 256}),
        };
        var head: [8]u8 = undefined;
        std.mem.writeInt(u32, head[0..4], @bitCast(if (i == at) score else 0), .little);
        std.mem.writeInt(i32, head[4..8], @intCast(piece.len), .little);
        try out.appendSlice(gpa, &head);
        try out.appendSlice(gpa, piece);
    }
    return out.items;
}

test "tokenizer.bin: the contract's vocabulary rules, checked as it is read" {
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    var diag: Diag = .{};
    const good = try parseTokenizer(gpa, &diag, "tok.bin", try tinyTokenizer(gpa, 260, 0, 0, " "), 260);
    try testing.expectEqualStrings(" ", good.pieces[259]);
    const cases = .{
        .{ try tinyTokenizer(gpa, 260, 0, 0, "@@"), 260, "no piece \" \"" },
        .{ try tinyTokenizer(gpa, 260, 4, std.math.nan(f32), " "), 260, "token 4 has a NaN score" },
        .{ try tinyTokenizer(gpa, 260, 9, std.math.inf(f32), " "), 260, "token 9 has an infinite score" },
        .{ try tinyTokenizer(gpa, 200, 0, 0, " "), 200, "at least 259" },
    };
    inline for (cases) |c| {
        try testing.expectError(error.BadFile, parseTokenizer(gpa, &diag, "tok.bin", c[0], c[1]));
        try testing.expectEqualStrings("tok.bin", diag.path);
        if (std.mem.indexOf(u8, diag.problem(), c[2]) == null) {
            std.debug.print("'{s}' does not say '{s}'\n", .{ diag.problem(), c[2] });
            return error.TestUnexpectedResult;
        }
    }
}

test "v0 and v1 headers: one reader, each refusal a bad file" {
    var diag: Diag = .{};
    var v0: [28]u8 = @splat(0);
    for ([_]i32{ 8, 16, 1, 2, 2, -300, 4 }, 0..) |v, i| std.mem.writeInt(i32, v0[4 * i ..][0..4], v, .little);
    const h0 = try readHeader(&diag, "m.bin", &v0);
    try testing.expectEqual(@as(u8, 0), h0.version);
    try testing.expectEqual(@as(usize, 300), h0.config.vocab_size);
    try testing.expect(!h0.config.shared_classifier); // negative vocab_size: wcls follows
    var v1: [256]u8 = @splat(0);
    std.mem.writeInt(u32, v1[0..4], V1_MAGIC, .little);
    std.mem.writeInt(i32, v1[4..8], 1, .little);
    @memcpy(v1[8..36], &v0);
    std.mem.writeInt(i32, v1[28..32], 300, .little);
    v1[36] = 1;
    const h1 = try readHeader(&diag, "m.bin", &v1);
    try testing.expectEqual(@as(usize, 256), h1.size);
    try testing.expect(h1.config.shared_classifier);
    v1[36] = 7;
    try testing.expectError(error.BadFile, readHeader(&diag, "m.bin", &v1));
    v1[36] = 1;
    std.mem.writeInt(i32, v1[4..8], 2, .little);
    try testing.expectError(error.BadFile, readHeader(&diag, "m.bin", &v1));
    try testing.expectError(error.BadFile, readHeader(&diag, "m.bin", v1[0..100]));
    try testing.expectError(error.BadFile, readLlama2c(testing.allocator, &diag, "m.bin", &v0)); // truncated
}

test "loadFile: the huge-page copy and the file mapping hold the same bytes" {
    const io = testing.io;
    var tmp = testing.tmpDir(.{});
    defer tmp.cleanup();
    var bytes: [3 * 4096 + 5]u8 = undefined; // a partial last page
    for (&bytes, 0..) |*b, i| b.* = @truncate(i *% 131);
    try tmp.dir.writeFile(io, .{ .sub_path = "w.bin", .data = &bytes });
    try tmp.dir.writeFile(io, .{ .sub_path = "empty.bin", .data = "" });
    var buf: [2][64]u8 = undefined;
    const full = try std.fmt.bufPrint(&buf[0], ".zig-cache/tmp/{s}/w.bin", .{tmp.sub_path});
    const empty = try std.fmt.bufPrint(&buf[1], ".zig-cache/tmp/{s}/empty.bin", .{tmp.sub_path});
    var diag: Diag = .{};
    for ([_]bool{ true, false }) |huge_pages| {
        const data = try loadFile(io, &diag, full, huge_pages);
        defer std.posix.munmap(@alignCast(data));
        try testing.expectEqualSlices(u8, &bytes, data);
        try testing.expectEqual(@as(usize, 0), (try loadFile(io, &diag, empty, huge_pages)).len);
        try testing.expectError(error.BadFile, loadFile(io, &diag, ".zig-cache/tmp/no-such-file.bin", huge_pages));
        try testing.expectEqualStrings("cannot open: no such file", diag.problem());
    }
}
