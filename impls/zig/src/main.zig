//! Inference for Llama-2 Transformer models in pure Zig: karpathy/llama2.c's run.c, ported for
//! polyllama (docs/port-contract.md). Reads llama2.c v0/v1 checkpoints and GGUF files (F32 or
//! Q8_0 matrices) into one page-aligned region (huge pages on Linux, else a file mapping);
//! the prompt prefilled in batches (matrix-matrix kernels), then batch-1 decoding with @Vector
//! kernels (fp32, and int8 dot products for Q8_0 weights), on a persistent worker pool. This file wires the modules together in run.c's order: flags, model
//! file, tokenizer, pool, then generation or the logits mode; its last test pulls in every
//! module's tests.

const std = @import("std");
const builtin = @import("builtin");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const model = @import("model.zig");
const checkpoint = @import("checkpoint.zig");
const errors = @import("errors.zig");
const cli = @import("cli.zig");
const pool_mod = @import("pool.zig");
const q8 = @import("q8.zig");
const forward_mod = @import("forward.zig");
const prefill = @import("prefill.zig");
const tokenizer_mod = @import("tokenizer.zig");
const sampler_mod = @import("sampler.zig");
const gen = @import("generate.zig");
const Config = model.Config;
const Transformer = forward_mod.Transformer;
const Tokenizer = tokenizer_mod.Tokenizer;
const Pool = pool_mod.Pool;
const Stats = gen.Stats;
const outOfMemory = errors.outOfMemory;
const usageError = errors.usageError;

comptime {
    // Weights are used in place from the little-endian file's bytes.
    if (builtin.cpu.arch.endian() != .little) @compileError("polyllama's Zig port needs a little-endian host");
}

pub fn main(init: std.process.Init) void {
    const io = init.io;
    const t0 = Io.Clock.awake.now(io);
    const gpa = init.arena.allocator(); // everything lives until exit
    const argv = init.minimal.args.toSlice(gpa) catch outOfMemory();
    const args = cli.parseArgs(gpa, argv[@min(1, argv.len)..]);

    // build the Transformer via the model file; GGUF brings its own tokenizer.
    // POLYLLAMA_HUGEPAGES=0 keeps the plain file mapping, for before/after runs.
    const huge_pages = !std.mem.eql(u8, init.environ_map.get("POLYLLAMA_HUGEPAGES") orelse "", "0");
    q8.prefetch = !std.mem.eql(u8, init.environ_map.get("POLYLLAMA_Q8_PREFETCH") orelse "", "0");
    var transformer = forward_mod.buildTransformer(gpa, io, args.checkpoint, huge_pages);
    const c = transformer.config;
    // the KV cache holds the positions this run can reach, checked against the limit now and
    // allocated once the tokenizer is read too
    const ids: []const u32 = if (args.mode == .logits) idsInVocab(gpa, args.ids.?, c) else &.{};
    const steps: usize = if (args.steps == 0 or args.steps > c.seq_len) c.seq_len else @intCast(args.steps);
    const kv_rows = if (args.mode == .logits) ids.len else steps;
    var kv_diag: model.Diag = .{};
    model.checkKvCache(&kv_diag, args.checkpoint, c, kv_rows) catch |err| errors.readFailed(err, &kv_diag);
    const vocab = transformer.vocab orelse blk: {
        const tok_path = args.tokenizer orelse usageError("-z tokenizer is required for a .bin checkpoint", .{});
        var diag: model.Diag = .{};
        break :blk checkpoint.readTokenizer(gpa, io, &diag, tok_path, c.vocab_size) catch |err| errors.readFailed(err, &diag);
    };
    var tokenizer = tokenizer_mod.buildTokenizer(gpa, vocab);
    tokenizer.bos = c.bos;
    tokenizer.eos = c.eos;
    const pool = pool_mod.buildPool(gpa, io, args.threads);
    forward_mod.initState(gpa, &transformer, args.threads, kv_rows);
    // the batched pass's scratch, sized once for min(batch, seq_len) rows, or fewer when the run
    // reaches fewer positions (and the logits of as many rows in logits mode, of one row
    // otherwise)
    const batch: usize = @intCast(@min(args.batch, c.seq_len));
    const logit_rows = if (args.mode == .logits) @min(batch, ids.len) else 1;
    var bs = prefill.buildBatchState(gpa, c, @min(batch, kv_rows), logit_rows, pool.n_chunks);
    const load_s = gen.seconds(io, t0);

    const stats = switch (args.mode) {
        .logits => gen.logitsRun(io, &transformer, &bs, pool, ids, batch, args.output.?),
        .generate => generateText(gpa, io, &transformer, &bs, pool, &tokenizer, args, steps, batch),
    };
    gen.printStats(args.threads, load_s, stats);
    prefill.freeBatchState(gpa, &bs);
    pool_mod.freePool(gpa, pool);
    tokenizer_mod.freeTokenizer(gpa, &tokenizer);
    forward_mod.freeTransformer(gpa, &transformer);
}

/// -k's ids, now that the model's vocabulary and sequence length are known.
fn idsInVocab(gpa: Allocator, raw: []const i64, c: Config) []const u32 {
    if (raw.len < 1 or raw.len > c.seq_len) usageError("-k needs 1..{d} ids in [0, {d})", .{ c.seq_len, c.vocab_size });
    const ids = errors.allocOrDie(gpa, u32, raw.len);
    for (raw, ids) |r, *id| {
        if (r < 0 or r >= c.vocab_size) usageError("-k needs 1..{d} ids in [0, {d})", .{ c.seq_len, c.vocab_size });
        id.* = @intCast(r);
    }
    return ids;
}

/// The prompt encoded, then run.c's generation loop writing the text to stdout.
fn generateText(gpa: Allocator, io: Io, transformer: *Transformer, bs: *prefill.BatchState, pool: *Pool, tokenizer: *const Tokenizer, args: cli.Args, steps: usize, batch: usize) Stats {
    const c = transformer.config;
    const seed = if (args.seed > 0) args.seed else @as(u64, @intCast(@max(1, Io.Clock.real.now(io).toSeconds())));
    var sampler = sampler_mod.buildSampler(gpa, c.vocab_size, args.temperature, args.topp, seed);
    defer sampler_mod.freeSampler(gpa, &sampler);
    const prompt_tokens = tokenizer_mod.encode(tokenizer, gpa, args.prompt, true, false) catch |err| switch (err) {
        error.OutOfMemory => outOfMemory(),
        error.ByteTokenMissing => errors.badFile(args.tokenizer orelse args.checkpoint, "the vocabulary of {d} pieces cannot spell the prompt (no byte or space token)", .{c.vocab_size}),
    };
    var out_buf: [4096]u8 = undefined;
    var stdout = Io.File.stdout().writerStreaming(io, &out_buf);
    const out: gen.Output = .{ .writer = &stdout.interface };
    const stats = gen.generate(io, transformer, bs, pool, tokenizer, &sampler, prompt_tokens, steps, batch, args.ignore_bos, out);
    out.emit("\n");
    return stats;
}

test {
    // every module's tests, the readers' included
    _ = checkpoint;
    _ = @import("gguf.zig");
    _ = model;
    _ = errors;
    _ = cli;
    _ = pool_mod;
    _ = @import("kernels.zig");
    _ = q8;
    _ = @import("half.zig");
    _ = forward_mod;
    _ = prefill;
    _ = @import("gemm.zig");
    _ = @import("gemm_q8.zig");
    _ = tokenizer_mod;
    _ = sampler_mod;
    _ = gen;
    _ = @import("testutil.zig");
}
