//! Generation (run.c's loop) and the logits mode, both timed for the statistics line
//! (docs/port-contract.md, section 3).

const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const checkpoint = @import("checkpoint.zig");
const errors = @import("errors.zig");
const forward_mod = @import("forward.zig");
const prefill = @import("prefill.zig");
const pool_mod = @import("pool.zig");
const q8 = @import("q8.zig");
const tokenizer_mod = @import("tokenizer.zig");
const sampler_mod = @import("sampler.zig");
const testutil = @import("testutil.zig");
const Matrix = model.Matrix;
const Q8Block = model.Q8Block;
const Transformer = forward_mod.Transformer;
const forward = forward_mod.forward;
const BatchState = prefill.BatchState;
const forwardBatch = prefill.forwardBatch;
const Pool = pool_mod.Pool;
const Tokenizer = tokenizer_mod.Tokenizer;
const Sampler = sampler_mod.Sampler;
const sample = sampler_mod.sample;
const decode = tokenizer_mod.decode;
const safePiece = tokenizer_mod.safePiece;
const QB = q8.QB;
const runtimeError = errors.runtimeError;
const testing = std.testing;

const PORT_NAME = "zig";

pub const Stats = struct {
    prompt_tokens: usize = 0,
    generated_tokens: usize = 0,
    positions: usize = 0,
    batch: usize = 1,
    prefill_tokens: usize = 0, // positions of the prefill (logits mode: all of them)
    ttft_s: f64 = 0,
    prefill_s: f64 = 0,
    decode_s: f64 = 0,
};

pub fn seconds(io: Io, since: Io.Timestamp) f64 {
    const ns = since.durationTo(Io.Clock.awake.now(io)).nanoseconds;
    return @as(f64, @floatFromInt(ns)) / 1e9;
}

pub const Output = struct {
    writer: *Io.Writer,
    pub fn emit(self: Output, bytes: []const u8) void {
        if (bytes.len == 0) return;
        self.writer.writeAll(bytes) catch runtimeError("cannot write to stdout", .{});
        self.writer.flush() catch runtimeError("cannot write to stdout", .{});
    }
};

/// run.c's loop with the prompt's positions run by forwardBatch first, in batches of at most
/// `batch` (<= bs.rows) positions; only the last prompt position's logits are computed there.
pub fn generate(io: Io, t: *Transformer, bs: *BatchState, pool: *Pool, tok: *const Tokenizer, sampler: *Sampler, prompt_tokens: []const u32, steps: usize, batch: usize, ignore_bos: bool, out: Output) Stats {
    var stats: Stats = .{ .prompt_tokens = prompt_tokens.len, .batch = batch };
    const start = Io.Clock.awake.now(io);
    const n_prefill = @min(prompt_tokens.len, steps);
    var logits: []f32 = &.{};
    var p0: usize = 0;
    while (p0 < n_prefill) {
        const n = @min(batch, n_prefill - p0);
        const last = p0 + n == n_prefill and n_prefill == prompt_tokens.len;
        logits = forwardBatch(t, bs, pool, prompt_tokens[p0..][0..n], p0, if (last) .last else .none);
        p0 += n;
    }
    stats.positions = n_prefill;
    stats.prefill_tokens = n_prefill;
    stats.prefill_s = seconds(io, start);
    var first: ?Io.Timestamp = null;
    var token = prompt_tokens[0]; // kick off with the first token in the prompt
    var pos: usize = 0;
    while (pos < steps) : (pos += 1) {
        var next: u32 = undefined;
        if (pos < prompt_tokens.len - 1) {
            next = prompt_tokens[pos + 1]; // still processing the input prompt: force the next prompt token (its forward pass was the prefill's)
        } else {
            if (pos >= prompt_tokens.len) { // at the last prompt position the prefill gave the logits
                logits = forward(t, pool, token, pos); // forward the transformer to get logits for the next token
                stats.positions += 1;
            }
            next = @intCast(sample(sampler, logits)); // otherwise sample the next token from the logits
            stats.generated_tokens += 1;
            if (first == null) first = Io.Clock.awake.now(io);
        }
        // data-dependent terminating condition: the BOS token (the file's, 1 by default) delimits sequences
        if (next == tok.bos and !ignore_bos) break;
        out.emit(safePiece(decode(tok, token, next)));
        token = next;
    }
    const end = Io.Clock.awake.now(io);
    if (first) |f| {
        stats.ttft_s = secondsBetween(start, f);
        stats.decode_s = secondsBetween(f, end);
    } else stats.ttft_s = secondsBetween(start, end);
    return stats;
}

fn secondsBetween(a: Io.Timestamp, b: Io.Timestamp) f64 {
    return @as(f64, @floatFromInt(a.durationTo(b).nanoseconds)) / 1e9;
}

/// forwardBatch over the ids in batches of at most `batch` (<= bs.rows, and bs.logits holds that
/// many rows), each row of logits written as raw little-endian float32.
pub fn logitsRun(io: Io, t: *Transformer, bs: *BatchState, pool: *Pool, ids: []const u32, batch: usize, out_path: []const u8) Stats {
    const file = Io.Dir.cwd().createFile(io, out_path, .{}) catch |err| runtimeError("{s}: cannot write: {t}", .{ out_path, err });
    defer file.close(io);
    var buf: [1 << 16]u8 = undefined;
    var fw = file.writer(io, &buf);
    const start = Io.Clock.awake.now(io);
    var p0: usize = 0;
    while (p0 < ids.len) {
        const n = @min(batch, ids.len - p0);
        const logits = forwardBatch(t, bs, pool, ids[p0..][0..n], p0, .all);
        fw.interface.writeAll(std.mem.sliceAsBytes(logits)) catch runtimeError("{s}: cannot write", .{out_path});
        p0 += n;
    }
    const elapsed = seconds(io, start);
    fw.interface.flush() catch runtimeError("{s}: cannot write", .{out_path});
    return .{ .prompt_tokens = ids.len, .positions = ids.len, .batch = batch, .prefill_tokens = ids.len, .ttft_s = elapsed, .prefill_s = elapsed };
}

pub fn printStats(threads: usize, load_s: f64, st: Stats) void {
    const rate: f64 = if (st.generated_tokens > 1 and st.decode_s > 0) @as(f64, @floatFromInt(st.generated_tokens - 1)) / st.decode_s else 0;
    const prefill_rate: f64 = if (st.prefill_s > 0) @as(f64, @floatFromInt(st.prefill_tokens)) / st.prefill_s else 0;
    std.debug.print("polyllama-stats: {{\"port\":\"{s}\",\"prompt_tokens\":{d},\"generated_tokens\":{d},\"positions\":{d},\"threads\":{d},\"batch\":{d}," ++
        "\"load_s\":{d:.6},\"ttft_s\":{d:.6},\"prefill_s\":{d:.6},\"prefill_tok_s\":{d:.4},\"decode_s\":{d:.6},\"decode_tok_s\":{d:.4}}}\n", .{ PORT_NAME, st.prompt_tokens, st.generated_tokens, st.positions, threads, st.batch, load_s, st.ttft_s, st.prefill_s, prefill_rate, st.decode_s, rate });
}

/// llama.cpp's quantize_row_q8_0_ref, which the converter uses: d = amax / 127, q = round(x / d)
/// with ties away from zero (C's roundf, Zig's @round), d stored as fp16.
fn quantizeWeightsForTest(gpa: Allocator, m: Matrix, cols: usize) !Matrix {
    if (cols % QB != 0) return m; // rows not a multiple of 32 long stay F32, as in the converter
    const x = m.f32;
    const blocks = try gpa.alloc(Q8Block, x.len / QB);
    for (blocks, 0..) |*blk, b| {
        const v = x[b * QB ..][0..QB];
        var amax: f32 = 0;
        for (v) |e| amax = @max(amax, @abs(e));
        const d = amax / 127.0;
        const id: f32 = if (d != 0) 1.0 / d else 0;
        for (&blk.qs, v) |*q, e| q.* = @intFromFloat(@round(e * id));
        std.mem.writeInt(u16, &blk.d, @bitCast(@as(f16, @floatCast(d))), .little);
    }
    return .{ .q8_0 = blocks };
}

test "stories260K: the converter's Q8_0 blocks, and greedy text as the golden texts, f32 and Q8_0" {
    const model_path = try testutil.findModelFile("stories260K.bin");
    defer testing.allocator.free(model_path);
    const tok_path = try testutil.findModelFile("tok512.bin");
    defer testing.allocator.free(tok_path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    var diag: model.Diag = .{};
    const m = try checkpoint.read(gpa, testing.io, &diag, model_path, false);
    defer std.posix.munmap(@alignCast(@constCast(m.file)));
    const c = m.config;
    // quantized here as `invoke models.convert --type q8_0` does; ffn_down (rows of 172) stays F32
    var w = m.weights;
    w.token_embedding = try quantizeWeightsForTest(gpa, w.token_embedding, c.dim);
    w.wcls = w.token_embedding;
    w.layers = try gpa.dupe(model.LayerWeights, w.layers);
    var crc: std.hash.Crc32 = .init();
    crc.update(std.mem.sliceAsBytes(w.token_embedding.q8_0));
    for (w.layers) |*lw| {
        inline for (.{ "wq", "wk", "wv", "wo", "w1", "w3" }) |name| {
            @field(lw, name) = try quantizeWeightsForTest(gpa, @field(lw, name), c.dim);
            crc.update(std.mem.sliceAsBytes(@field(lw, name).q8_0));
        }
        lw.w2 = try quantizeWeightsForTest(gpa, lw.w2, c.hidden_dim);
        try testing.expect(lw.w2 == .f32);
    }
    // zlib.crc32 of the same tensors' bytes in the converter's stories260K Q8_0 GGUF
    try testing.expectEqual(@as(u32, 0xdbb3b24c), crc.final());

    const vocab = try checkpoint.readTokenizer(gpa, testing.io, &diag, tok_path, c.vocab_size);
    const tok = tokenizer_mod.buildTokenizer(gpa, vocab);
    try expectGolden(gpa, &tok, c, m.weights, m.file, "", 256, "stories260K.f32.greedy.txt");
    try expectGolden(gpa, &tok, c, m.weights, m.file, "Once upon a time, there was a", 96, "stories260K.f32.prompt.txt");
    try expectGolden(gpa, &tok, c, w, m.file, "", 128, "stories260K.q8_0.greedy.txt");
}

test "stories260K: batched logits equal one-position logits at -b 1, 7 and 40, -j 1 and 2" {
    const model_path = try testutil.findModelFile("stories260K.bin");
    defer testing.allocator.free(model_path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    var diag: model.Diag = .{};
    const m = try checkpoint.read(gpa, testing.io, &diag, model_path, false);
    defer std.posix.munmap(@alignCast(@constCast(m.file)));
    const c = m.config;
    var ids: [40]u32 = undefined;
    for (&ids, 0..) |*id, i| id.* = if (i == 0) 1 else @intCast((7 * i + 300) % c.vocab_size);
    // the contract's float32 tolerance; Q8_0 its loose one, since the two paths' activations may
    // round differently near a tie
    try expectBatchedLogits(gpa, c, m.weights, m.file, &ids, 1e-4);
    var w = m.weights;
    w.token_embedding = try quantizeWeightsForTest(gpa, w.token_embedding, c.dim);
    w.wcls = w.token_embedding;
    w.layers = try gpa.dupe(model.LayerWeights, w.layers);
    for (w.layers) |*lw| {
        inline for (.{ "wq", "wk", "wv", "wo", "w1", "w3" }) |name| @field(lw, name) = try quantizeWeightsForTest(gpa, @field(lw, name), c.dim);
    }
    try expectBatchedLogits(gpa, c, w, m.file, &ids, 5e-2);
}

fn expectBatchedLogits(gpa: Allocator, c: model.Config, w: model.TransformerWeights, file: []const u8, ids: []const u32, tol: f32) !void {
    const V = c.vocab_size;
    const want = try gpa.alloc(f32, ids.len * V);
    {
        var t: Transformer = .{ .config = c, .weights = w, .state = forward_mod.buildRunState(gpa, c, 1, c.seq_len), .file = file, .vocab = null };
        const pool = pool_mod.buildPool(gpa, testing.io, 1);
        defer pool_mod.freePool(gpa, pool);
        for (ids, 0..) |id, pos| @memcpy(want[pos * V ..][0..V], forward(&t, pool, id, pos));
    }
    for ([_]usize{ 1, 2 }) |n_workers| {
        for ([_]usize{ 1, 7, ids.len }) |batch| {
            const n_chunks = n_workers * pool_mod.CHUNKS_PER_WORKER;
            var t: Transformer = .{ .config = c, .weights = w, .state = forward_mod.buildRunState(gpa, c, n_chunks, c.seq_len), .file = file, .vocab = null };
            var bs = prefill.buildBatchState(gpa, c, batch, batch, n_chunks);
            const pool = pool_mod.buildPool(gpa, testing.io, n_workers);
            defer pool_mod.freePool(gpa, pool);
            var p0: usize = 0;
            while (p0 < ids.len) {
                const n = @min(batch, ids.len - p0);
                const got = forwardBatch(&t, &bs, pool, ids[p0..][0..n], p0, .all);
                for (0..n) |r| {
                    const g = got[r * V ..][0..V];
                    const e = want[(p0 + r) * V ..][0..V];
                    var scale: f32 = 0;
                    for (e) |v| scale = @max(scale, @abs(v));
                    for (g, e) |a, b| try testing.expect(@abs(a - b) <= tol * (1 + scale));
                    if (tol < 1e-3) try testing.expectEqual(std.mem.indexOfMax(f32, e), std.mem.indexOfMax(f32, g));
                }
                p0 += n;
            }
        }
    }
}

/// Greedy generation at one and two workers prints the golden text.
fn expectGolden(gpa: std.mem.Allocator, tok: *const tokenizer_mod.Tokenizer, c: model.Config, w: model.TransformerWeights, file: []const u8, text: []const u8, steps: usize, name: []const u8) !void {
    const want = try testutil.golden(gpa, name);
    const prompt = try tokenizer_mod.encode(tok, gpa, text, true, false);
    for ([_]usize{ 1, 2 }) |n_workers| {
        for ([_]usize{ 1, 3, 512 }) |batch_flag| {
            const n_chunks = n_workers * pool_mod.CHUNKS_PER_WORKER;
            const batch = @min(batch_flag, c.seq_len);
            var t: Transformer = .{ .config = c, .weights = w, .state = forward_mod.buildRunState(gpa, c, n_chunks, c.seq_len), .file = file, .vocab = null };
            var bs = prefill.buildBatchState(gpa, c, batch, 1, n_chunks);
            const pool = pool_mod.buildPool(gpa, testing.io, n_workers);
            defer pool_mod.freePool(gpa, pool);
            var sampler = sampler_mod.buildSampler(gpa, c.vocab_size, 0, 0.9, 1);
            var buf: [4096]u8 = undefined;
            var writer: Io.Writer = .fixed(&buf);
            _ = generate(testing.io, &t, &bs, pool, tok, &sampler, prompt, steps, batch, false, .{ .writer = &writer });
            try testing.expectEqualStrings(want, writer.buffered());
        }
    }
}

test "stories260K: a file's theta and eps change the logits, the defaults are llama2.c's" {
    const model_path = try testutil.findModelFile("stories260K.bin");
    defer testing.allocator.free(model_path);
    var arena: std.heap.ArenaAllocator = .init(testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    var diag: model.Diag = .{};
    const m = try checkpoint.read(gpa, testing.io, &diag, model_path, false);
    defer std.posix.munmap(@alignCast(@constCast(m.file)));
    const c = m.config;
    try testing.expectEqual(@as(f32, 10000), c.rope_theta);
    try testing.expectEqual(@as(f32, 1e-5), c.norm_eps);
    const ids = [_]u32{ 1, 300, 301, 302, 303, 304 };
    var keyed = c;
    keyed.rope_theta = 500000;
    var eps = c;
    eps.norm_eps = 1e-2;
    var logits: [3][]f32 = undefined;
    for ([_]model.Config{ c, keyed, eps }, 0..) |cfg, k| {
        var t: Transformer = .{ .config = cfg, .weights = m.weights, .state = forward_mod.buildRunState(gpa, cfg, 1, ids.len), .file = m.file, .vocab = null };
        var bs = prefill.buildBatchState(gpa, cfg, 3, 3, pool_mod.CHUNKS_PER_WORKER);
        const pool = pool_mod.buildPool(gpa, testing.io, 1);
        defer pool_mod.freePool(gpa, pool);
        logits[k] = try gpa.alloc(f32, ids.len * c.vocab_size);
        // one-position and batched paths both read the keys: the first half one way, the rest the other
        for (0..3) |pos| @memcpy(logits[k][pos * c.vocab_size ..][0..c.vocab_size], forward(&t, pool, ids[pos], pos));
        @memcpy(logits[k][3 * c.vocab_size ..], forwardBatch(&t, &bs, pool, ids[3..], 3, .all));
    }
    // position 0 rotates by angle 0, so theta shows from position 1 on; eps everywhere
    for (1..ids.len) |pos| {
        for ([_]usize{ 1, 2 }) |k| {
            var diff: f32 = 0;
            for (logits[0][pos * c.vocab_size ..][0..c.vocab_size], logits[k][pos * c.vocab_size ..][0..c.vocab_size]) |x, y| diff = @max(diff, @abs(x - y));
            testing.expect(diff > 1e-3) catch |err| {
                std.debug.print("position {d}, config {d}: logits moved by only {e}\n", .{ pos, k, diff });
                return err;
            };
        }
    }
}
