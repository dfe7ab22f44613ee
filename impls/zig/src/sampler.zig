//! run.c's sampler, which takes logits and returns a token: xorshift RNG, argmax, multinomial
//! and top-p, its softmax summing in numpy's pairwise order as the reference does.

const std = @import("std");
const Allocator = std.mem.Allocator;
const errors = @import("errors.zig");
const allocOrDie = errors.allocOrDie;
const testing = std.testing;

pub const ProbIndex = struct { prob: f32, index: u32 }; // struct used when sorting probabilities during top-p sampling

pub const Sampler = struct {
    temperature: f32,
    topp: f64,
    rng_state: u64,
    probindex: []ProbIndex, // buffer used in top-p sampling (vocab_size)
};

pub fn buildSampler(gpa: Allocator, vocab_size: usize, temperature: f64, topp: f64, seed: u64) Sampler {
    return .{ .temperature = @floatCast(temperature), .topp = topp, .rng_state = seed, .probindex = allocOrDie(gpa, ProbIndex, vocab_size) };
}

pub fn freeSampler(gpa: Allocator, s: *Sampler) void {
    gpa.free(s.probindex);
}

/// xorshift rng: https://en.wikipedia.org/wiki/Xorshift#xorshift.2A
fn randomU32(state: *u64) u32 {
    state.* ^= state.* >> 12;
    state.* ^= state.* << 25;
    state.* ^= state.* >> 27;
    return @intCast((state.* *% 0x2545F4914F6CDD1D) >> 32);
}

/// random float32 in [0, 1)
fn randomF32(state: *u64) f32 {
    return @as(f32, @floatFromInt(randomU32(state) >> 8)) / 16777216.0;
}

/// index of the largest probability; the first one among equals
fn sampleArgmax(probs: []const f32) usize {
    var max_i: usize = 0;
    for (probs, 0..) |p, i| {
        if (p > probs[max_i]) max_i = i;
    }
    return max_i;
}

/// sample index from probabilities (they must sum to 1!); coin is a random number in [0, 1)
fn sampleMult(probs: []const f32, coin: f32) usize {
    var cdf: f32 = 0;
    for (probs, 0..) |p, i| {
        cdf += p;
        if (coin < cdf) return i;
    }
    return probs.len - 1; // in case of rounding errors
}

fn probDescending(_: void, a: ProbIndex, b: ProbIndex) bool {
    return a.prob > b.prob or (a.prob == b.prob and a.index < b.index);
}

/// top-p sampling (or "nucleus sampling") samples from the smallest set of tokens that exceed
/// probability topp. This way we never sample tokens that have very low probabilities and are
/// less likely to go "off the rails".
fn sampleTopp(probs: []const f32, topp: f32, probindex: []ProbIndex, coin: f32) usize {
    if (probs.len == 1) return 0;
    // values smaller than (1 - topp) / (n - 1) cannot be part of the result, so for efficiency
    // we crop these out as candidates before sorting
    const cutoff = (1.0 - topp) / @as(f32, @floatFromInt(probs.len - 1));
    var n0: usize = 0;
    for (probs, 0..) |p, i| {
        if (p >= cutoff) {
            probindex[n0] = .{ .prob = p, .index = @intCast(i) };
            n0 += 1;
        }
    }
    if (n0 == 0) return probs.len - 1; // only NaN probabilities
    const cand = probindex[0..n0];
    std.mem.sort(ProbIndex, cand, {}, probDescending);

    // truncate the list where cumulative probability exceeds topp
    var cumulative: f32 = 0;
    var last = n0 - 1; // in case of rounding errors consider all elements
    for (cand, 0..) |c, i| {
        cumulative += c.prob;
        if (cumulative > topp) {
            last = i;
            break; // we've exceeded topp by including last
        }
    }

    // sample from the truncated list
    const r = coin * cumulative;
    var cdf: f32 = 0;
    for (cand[0 .. last + 1]) |c| {
        cdf += c.prob;
        if (r < cdf) return c.index;
    }
    return cand[last].index; // in case of rounding errors
}

/// numpy's pairwise summation (the reference's `e.sum()`), reproduced operation for operation.
/// Over a near-flat distribution of 32000 tokens a plain running sum drifts by ~1e-5, enough to
/// move the coin across a token boundary; summing the same way keeps sampling in step with the
/// reference on synthetic models too.
fn pairwiseSum(a: []const f32) f32 {
    if (a.len < 8) {
        var res: f32 = 0;
        for (a) |v| res += v;
        return res;
    } else if (a.len <= 128) {
        var r: [8]f32 = a[0..8].*;
        var i: usize = 8;
        while (i < a.len - a.len % 8) : (i += 8) {
            for (&r, a[i..][0..8]) |*ri, v| ri.* += v;
        }
        var res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while (i < a.len) : (i += 1) res += a[i];
        return res;
    }
    var n2 = a.len / 2; // halve, keeping the first part a multiple of the unroll factor
    n2 -= n2 % 8;
    return pairwiseSum(a[0..n2]) + pairwiseSum(a[n2..]);
}

/// The sampler's softmax: as `softmax`, with the reference's summation order.
fn softmaxProbs(x: []f32) void {
    var max_val = x[0];
    for (x[1..]) |v| max_val = @max(max_val, v);
    for (x) |*v| v.* = @exp(v.* - max_val);
    const sum = pairwiseSum(x);
    for (x) |*v| v.* /= sum;
}

pub fn sample(s: *Sampler, logits: []f32) usize {
    if (s.temperature == 0) return sampleArgmax(logits); // greedy argmax sampling
    for (logits) |*l| l.* /= s.temperature; // apply the temperature to the logits
    softmaxProbs(logits);
    const coin = randomF32(&s.rng_state); // flip a (float) coin (this is our source of entropy for sampling)
    if (s.topp <= 0 or s.topp >= 1) return sampleMult(logits, coin); // simply sample from the predicted probability distribution
    return sampleTopp(logits, @floatCast(s.topp), s.probindex, coin); // top-p (nucleus) sampling, clamping the least likely tokens to zero
}

test "xorshift draws for a seed" {
    var s: u64 = 42;
    for ([_]u32{ 1456360119, 3359763283, 3393612768, 4054632243, 3283045847 }) |want| try testing.expectEqual(want, randomU32(&s));
    s = 42;
    try testing.expectEqual(@as(f32, 0.3390852212905884), randomF32(&s));
    try testing.expectEqual(@as(f32, 0.7822558283805847), randomF32(&s));
}

test "argmax takes the first maximum" {
    try testing.expectEqual(@as(usize, 1), sampleArgmax(&.{ 1.0, 3.0, 0.5, 3.0, 2.0 }));
    try testing.expectEqual(@as(usize, 0), sampleArgmax(&.{ 7.0, 7.0 }));
}

test "multinomial and top-p sampling" {
    const probs = [_]f32{ 0.1, 0.3, 0.05, 0.3, 0.25 };
    var buf: [5]ProbIndex = undefined;
    // (coin, top-p 0.7 pick, full-distribution pick), from the reference sampler
    const cases = [_]struct { f32, usize, usize }{ .{ 0.0, 1, 0 }, .{ 0.2, 1, 1 }, .{ 0.5, 3, 3 }, .{ 0.7, 3, 3 }, .{ 0.9, 4, 4 }, .{ 0.99, 4, 4 } };
    for (cases) |cs| {
        try testing.expectEqual(cs[1], sampleTopp(&probs, 0.7, &buf, cs[0]));
        try testing.expectEqual(cs[2], sampleMult(&probs, cs[0]));
    }
    // whole sampler: temperature 0.8, top-p 0.9, seeded draws as the reference gives them
    const logits = [_]f32{ 1.0, 3.0, 0.5, 3.0, 2.0 };
    const want = [_][8]usize{ .{ 1, 3, 3, 1, 1, 3, 3, 3 }, .{ 3, 1, 3, 4, 3, 3, 1, 1 } };
    for ([_]u64{ 1, 3 }, want) |seed, w| {
        var sampler: Sampler = .{ .temperature = 0.8, .topp = 0.9, .rng_state = seed, .probindex = &buf };
        for (w) |expected| {
            var l = logits;
            try testing.expectEqual(expected, sample(&sampler, &l));
        }
    }
}

test "pairwise sum follows numpy's order" {
    var x: [300]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = 1.0 / @as(f32, @floatFromInt(i + 1));
    // numpy: np.sum(1 / np.arange(1, 301, dtype=np.float32), dtype=np.float32)
    try testing.expectEqual(@as(f32, 6.282664775848389), pairwiseSum(&x));
}
