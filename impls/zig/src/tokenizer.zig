//! run.c's byte-pair tokenizer over a vocabulary the readers have checked (model.Vocab): encode
//! (the dummy-prefix space, UTF-8 code points with byte fallback, greedy merges), decode, and
//! safe_printf's rule for what a piece prints as.

const std = @import("std");
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const errors = @import("errors.zig");
const checkpoint = @import("checkpoint.zig");
const testutil = @import("testutil.zig");
const Vocab = model.Vocab;
const outOfMemory = errors.outOfMemory;
const allocOrDie = errors.allocOrDie;
const testing = std.testing;

/// llama2.c's ids, and a GGUF's unless it states others (contract 3: the model's Config).
pub const BOS = 1;
pub const EOS = 2;
pub const Tokenizer = struct {
    vocab: Vocab,
    bos: u32 = BOS, // encode's first id; decode drops the space after it
    eos: u32 = EOS,
    lookup: std.StringHashMapUnmanaged(u32), // piece -> lowest id spelling it
    merge_buf: []u8, // room for two concatenated pieces
};

pub fn buildTokenizer(gpa: Allocator, vocab: Vocab) Tokenizer {
    var t: Tokenizer = .{ .vocab = vocab, .lookup = .empty, .merge_buf = allocOrDie(gpa, u8, 2 * vocab.max_token_length) };
    t.lookup.ensureTotalCapacity(gpa, @intCast(vocab.pieces.len)) catch outOfMemory();
    for (vocab.pieces, 0..) |p, i| {
        const gop = t.lookup.getOrPutAssumeCapacity(p);
        if (!gop.found_existing) gop.value_ptr.* = @intCast(i); // a duplicated piece keeps its lower id
    }
    return t;
}

pub fn freeTokenizer(gpa: Allocator, t: *Tokenizer) void {
    t.lookup.deinit(gpa);
    gpa.free(t.merge_buf);
}

pub const EncodeError = error{ ByteTokenMissing, OutOfMemory };

/// BPE-encodes `text` as run.c does: BOS, the dummy-prefix space, UTF-8 code points (or their
/// bytes as <0xXX> tokens), then greedy merges of the best-scoring adjacent pair.
pub fn encode(t: *const Tokenizer, gpa: Allocator, text: []const u8, bos: bool, eos: bool) EncodeError![]u32 {
    var tokens = try gpa.alloc(u32, text.len + 3);
    errdefer gpa.free(tokens);
    var n: usize = 0;
    if (bos) {
        tokens[n] = t.bos;
        n += 1;
    }
    if (text.len > 0) {
        // the dummy prefix: sentencepiece's add_dummy_prefix puts a space before the text
        tokens[n] = t.lookup.get(" ") orelse return error.ByteTokenMissing;
        n += 1;
    }
    n += try codePointTokens(t, text, tokens[n..]);
    n = mergePairs(t, tokens[0..n]);
    if (eos) {
        tokens[n] = t.eos;
        n += 1;
    }
    return gpa.realloc(tokens, n); // the caller frees exactly what it got
}

/// `text` as one token per UTF-8 code point that is a piece, else one per byte; returns how
/// many it wrote into `tokens` (at most text.len).
fn codePointTokens(t: *const Tokenizer, text: []const u8, tokens: []u32) error{ByteTokenMissing}!usize {
    const vocab_size = t.vocab.pieces.len;
    var n: usize = 0;
    var i: usize = 0;
    while (i < text.len) {
        // one UTF-8 code point: a start byte and up to 3 continuation bytes (10xxxxxx)
        const start = i;
        i += 1;
        while (i < text.len and text[i] & 0xC0 == 0x80 and i - start < 4) i += 1;
        if (t.lookup.get(text[start..i])) |id| {
            tokens[n] = id;
            n += 1;
        } else {
            // byte fallback: the first 3 ids are <unk>, <s>, </s>, then the 256 byte tokens
            for (text[start..i]) |b| {
                if (@as(usize, b) + 3 >= vocab_size) return error.ByteTokenMissing;
                tokens[n] = @as(u32, b) + 3;
                n += 1;
            }
        }
    }
    return n;
}

/// Merges the best-scoring adjacent pair (the first among equal scores) until no pair is a
/// piece; returns the number of tokens left at the front of `tokens`.
fn mergePairs(t: *const Tokenizer, tokens: []u32) usize {
    var n = tokens.len;
    while (true) {
        var best_score = -std.math.inf(f32);
        var best_id: u32 = 0;
        var best_idx: ?usize = null;
        for (0..n -| 1) |k| {
            const a = t.vocab.pieces[tokens[k]];
            const b = t.vocab.pieces[tokens[k + 1]];
            @memcpy(t.merge_buf[0..a.len], a);
            @memcpy(t.merge_buf[a.len..][0..b.len], b);
            if (t.lookup.get(t.merge_buf[0 .. a.len + b.len])) |id| {
                if (t.vocab.scores[id] > best_score) {
                    best_score = t.vocab.scores[id];
                    best_id = id;
                    best_idx = k;
                }
            }
        }
        const k = best_idx orelse return n; // no more pairs to merge
        tokens[k] = best_id;
        std.mem.copyForwards(u32, tokens[k + 1 .. n - 1], tokens[k + 2 .. n]);
        n -= 1;
    }
}

const byte_values: [256]u8 = blk: {
    var b: [256]u8 = undefined;
    for (&b, 0..) |*v, i| v.* = i;
    break :blk b;
};

/// The bytes `token` prints as after `prev`: a space after BOS is dropped, and a piece of the
/// form <0xHH> stands for that raw byte.
pub fn decode(t: *const Tokenizer, prev: u32, token: u32) []const u8 {
    var piece = t.vocab.pieces[token];
    if (prev == t.bos and piece.len > 0 and piece[0] == ' ') piece = piece[1..];
    if (piece.len == 6 and std.mem.startsWith(u8, piece, "<0x") and piece[5] == '>') {
        const byte = std.fmt.parseInt(u8, piece[3..5], 16) catch return piece;
        if (std.ascii.isHex(piece[3]) and std.ascii.isHex(piece[4])) return byte_values[byte..][0..1];
    }
    return piece;
}

/// What run.c's safe_printf would print: nothing for an empty piece or a lone byte that is
/// neither printable nor whitespace (raw byte tokens of broken UTF-8 and control codes).
pub fn safePiece(piece: []const u8) []const u8 {
    if (piece.len == 1) {
        const b = piece[0];
        if (!((b >= 0x20 and b <= 0x7E) or b == '\t' or b == '\n' or b == 0x0B or b == 0x0C or b == '\r')) return "";
    }
    return piece;
}

fn expectEncode(tok: *const Tokenizer, text: []const u8, expected: []const u32) !void {
    const ids = try encode(tok, testing.allocator, text, true, false);
    defer testing.allocator.free(ids);
    try testing.expectEqualSlices(u32, expected, ids);
}

test "tokenizer.bin: encode vectors and decode rules" {
    const path = try testutil.findModelFile("tokenizer.bin");
    defer testing.allocator.free(path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    var diag: model.Diag = .{};
    var tok = buildTokenizer(arena.allocator(), try checkpoint.readTokenizer(arena.allocator(), testing.io, &diag, path, 32000));
    try expectEncode(&tok, "I believe the meaning of life is", &.{ 1, 306, 4658, 278, 6593, 310, 2834, 338 });
    try expectEncode(&tok, "Once upon a time", &.{ 1, 9038, 2501, 263, 931 });
    try expectEncode(&tok, "", &.{1});
    // decode: the space after BOS is dropped, <0x0A> is a newline byte
    try testing.expectEqualStrings("Once", decode(&tok, BOS, 9038));
    try testing.expectEqualStrings(" upon", decode(&tok, 9038, 2501));
    try testing.expectEqualStrings("\n", decode(&tok, 5, 13));
    // byte fallback of a code point that is not a piece, and its bytes decoding back
    const ids = try encode(&tok, testing.allocator, "\u{1F600}", true, false);
    defer testing.allocator.free(ids);
    var text: std.ArrayList(u8) = .empty;
    defer text.deinit(testing.allocator);
    for (ids[1..], 0..) |id, i| try text.appendSlice(testing.allocator, decode(&tok, ids[i], id));
    try testing.expectEqualStrings("\u{1F600}", text.items); // the dummy space is dropped after BOS
}

test "safe_printf rules" {
    try testing.expectEqualStrings("", safePiece(""));
    try testing.expectEqualStrings("", safePiece("\x01"));
    try testing.expectEqualStrings("", safePiece("\xe2"));
    try testing.expectEqualStrings("\n", safePiece("\n"));
    try testing.expectEqualStrings("a", safePiece("a"));
    try testing.expectEqualStrings("\xe2\x96", safePiece("\xe2\x96"));
}
