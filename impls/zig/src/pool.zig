//! Thread pool: workers are started once and park between jobs. A job is split into a fixed
//! number of chunks (CHUNKS_PER_WORKER per worker); the main thread and the workers claim chunks
//! with one atomic add until none is left, so a worker the OS has descheduled delays a job by at
//! most the chunk it holds, never by its whole share.

const std = @import("std");
const Io = std.Io;
const Allocator = std.mem.Allocator;
const errors = @import("errors.zig");
const outOfMemory = errors.outOfMemory;
const allocOrDie = errors.allocOrDie;
const runtimeError = errors.runtimeError;

const SPIN_LIMIT = 2000; // pause loops (~50-100 us) before a waiting thread sleeps or yields its core
pub const CHUNKS_PER_WORKER = 4;

pub const Pool = struct {
    io: Io,
    n_workers: usize,
    n_chunks: u32,
    threads: []std.Thread,
    job: *const fn (ctx: *const anyopaque, chunk: usize, n_chunks: usize) void = undefined,
    ctx: *const anyopaque = undefined,
    /// (job id << 32) | next unclaimed chunk: one fetchAdd claims a chunk of the current job
    claim: std.atomic.Value(u64) = .init(0),
    epoch: std.atomic.Value(u32) = .init(0), // the current job id, for the futex
    done: std.atomic.Value(u32) = .init(0), // chunks of the current job finished
    sleepers: std.atomic.Value(u32) = .init(0), // workers parked on the futex
    quit: std.atomic.Value(bool) = .init(false),

    /// Runs `func(ctx, chunk, n_chunks)` for every chunk and returns when all are done.
    pub fn run(pool: *Pool, ctx: anytype, comptime func: fn (@TypeOf(ctx), usize, usize) void) void {
        const Ctx = @TypeOf(ctx);
        const Thunk = struct {
            fn call(p: *const anyopaque, chunk: usize, n: usize) void {
                func(@as(Ctx, @ptrCast(@alignCast(p))), chunk, n);
            }
        };
        if (pool.n_workers == 1) return func(ctx, 0, 1);
        pool.job = Thunk.call;
        pool.ctx = ctx;
        pool.done.store(0, .monotonic);
        const id = pool.epoch.load(.monotonic) +% 1;
        pool.claim.store(@as(u64, id) << 32, .release); // publishes job, ctx and done
        pool.epoch.store(id, .seq_cst);
        if (pool.sleepers.load(.seq_cst) > 0) pool.io.futexWake(u32, &pool.epoch.raw, std.math.maxInt(u32));
        _ = pool.work();
        var spins: usize = 0;
        while (pool.done.load(.acquire) != pool.n_chunks) {
            spins += 1;
            if (spins < SPIN_LIMIT) std.atomic.spinLoopHint() else std.Thread.yield() catch {};
        }
    }

    /// Claims and runs chunks until the job has none left; returns the job's id.
    fn work(pool: *Pool) u32 {
        while (true) {
            const c = pool.claim.fetchAdd(1, .acq_rel);
            const chunk: u32 = @truncate(c);
            // a claimed chunk keeps its job open, so job and ctx are still this job's
            if (chunk >= pool.n_chunks) return @intCast(c >> 32);
            pool.job(pool.ctx, chunk, pool.n_chunks);
            _ = pool.done.fetchAdd(1, .release);
        }
    }

    fn workerMain(pool: *Pool) void {
        var seen: u32 = 0;
        while (true) {
            var spins: usize = 0;
            while (pool.epoch.load(.acquire) == seen) {
                spins += 1;
                if (spins < SPIN_LIMIT) {
                    std.atomic.spinLoopHint();
                } else {
                    _ = pool.sleepers.fetchAdd(1, .seq_cst);
                    pool.io.futexWaitUncancelable(u32, &pool.epoch.raw, seen);
                    _ = pool.sleepers.fetchSub(1, .seq_cst);
                }
            }
            if (pool.quit.load(.acquire)) return;
            seen = pool.work();
        }
    }
};

/// -j 1 starts no thread at all; -j N starts N-1 workers next to the main thread.
pub fn buildPool(gpa: Allocator, io: Io, n_workers: usize) *Pool {
    const pool = gpa.create(Pool) catch outOfMemory();
    pool.* = .{ .io = io, .n_workers = n_workers, .n_chunks = @intCast(n_workers * CHUNKS_PER_WORKER), .threads = allocOrDie(gpa, std.Thread, n_workers - 1) };
    for (pool.threads, 1..) |*t, w| {
        t.* = std.Thread.spawn(.{ .stack_size = 1 << 20 }, Pool.workerMain, .{pool}) catch |err|
            runtimeError("cannot start worker thread {d} of {d}: {t}", .{ w, n_workers, err });
    }
    return pool;
}

pub fn freePool(gpa: Allocator, pool: *Pool) void {
    pool.quit.store(true, .release);
    _ = pool.epoch.fetchAdd(1, .seq_cst);
    pool.io.futexWake(u32, &pool.epoch.raw, std.math.maxInt(u32));
    for (pool.threads) |t| t.join();
    gpa.free(pool.threads);
    gpa.destroy(pool);
}

/// The share [lo, hi) of `n` items in chunk `k` of `n_chunks`; boundaries fall on multiples
/// of 4 so that the matmul runs whole 4-row blocks.
pub fn share(n: usize, k: usize, n_chunks: usize) [2]usize {
    const lo = if (k == 0) 0 else (n * k / n_chunks) & ~@as(usize, 3);
    const hi = if (k + 1 == n_chunks) n else (n * (k + 1) / n_chunks) & ~@as(usize, 3);
    return .{ @min(lo, n), @min(hi, n) };
}
