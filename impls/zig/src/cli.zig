//! The command line (docs/port-contract.md, section 2): flags each taking exactly one value,
//! numbers in plain decimal only, every refusal a usage error.

const std = @import("std");
const Allocator = std.mem.Allocator;
const errors = @import("errors.zig");
const usageError = errors.usageError;
const allocOrDie = errors.allocOrDie;
const testing = std.testing;

pub const Mode = enum { generate, logits };

pub const Args = struct {
    checkpoint: []const u8,
    tokenizer: ?[]const u8 = null,
    temperature: f64 = 1.0,
    topp: f64 = 0.9,
    seed: u64 = 0,
    steps: u64 = 256, // any number of digits: more than seq_len means seq_len
    prompt: []const u8 = "",
    threads: usize = 1,
    mode: Mode = .generate,
    output: ?[]const u8 = null,
    ids: ?[]const i64 = null, // range-checked once the model's vocabulary is known
    ignore_bos: bool = false,
    batch: u64 = 512, // any number of digits: more than seq_len means seq_len
};

/// Plain decimal only (contract section 2): `[+-]?[0-9]+`.
fn isPlainInt(text: []const u8) bool {
    const digits = if (text.len > 0 and (text[0] == '+' or text[0] == '-')) text[1..] else text;
    if (digits.len == 0) return false;
    for (digits) |ch| if (!std.ascii.isDigit(ch)) return false;
    return true;
}

/// Plain decimal only: `[+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)?`, so no inf, nan, hex,
/// underscores or spaces.
fn isPlainFloat(text: []const u8) bool {
    var i: usize = 0;
    if (i < text.len and (text[i] == '+' or text[i] == '-')) i += 1;
    var mantissa_digits: usize = 0;
    while (i < text.len and std.ascii.isDigit(text[i])) : (i += 1) mantissa_digits += 1;
    if (i < text.len and text[i] == '.') {
        i += 1;
        while (i < text.len and std.ascii.isDigit(text[i])) : (i += 1) mantissa_digits += 1;
    }
    if (mantissa_digits == 0) return false;
    if (i < text.len and (text[i] == 'e' or text[i] == 'E')) {
        i += 1;
        if (i < text.len and (text[i] == '+' or text[i] == '-')) i += 1;
        return i < text.len and isPlainInt(text[i..]) and std.ascii.isDigit(text[i]);
    }
    return i == text.len;
}

fn parseFloatArg(flag: []const u8, text: []const u8, lo: f64, hi: f64) f64 {
    if (!isPlainFloat(text)) usageError("{s} expects a number, got '{s}'", .{ flag, text });
    const v = std.fmt.parseFloat(f64, text) catch usageError("{s} expects a number, got '{s}'", .{ flag, text });
    // 1e999 is plain decimal but overflows to infinity: out of range, like any other bound
    if (!std.math.isFinite(v) or v < lo or v > hi) usageError("{s} {s} is out of range", .{ flag, text });
    return v;
}

fn parseIntArg(flag: []const u8, text: []const u8, lo: i128, hi: i128) i128 {
    if (!isPlainInt(text)) usageError("{s} expects an integer, got '{s}'", .{ flag, text });
    return intInRange(text, lo, hi) orelse usageError("{s} {s} is out of range", .{ flag, text });
}

/// A plain-decimal integer in [lo, hi], or null; one too large for i128 is out of range too.
fn intInRange(text: []const u8, lo: i128, hi: i128) ?i128 {
    const v = std.fmt.parseInt(i128, text, 10) catch return null;
    return if (v < lo or v > hi) null else v;
}

fn parseSteps(text: []const u8) u64 {
    if (!isPlainInt(text)) usageError("-n expects an integer, got '{s}'", .{text});
    return stepsValue(text) orelse usageError("-n {s} is out of range", .{text});
}

/// -n is an integer >= 0 of any number of digits; values past u64 saturate, since everything
/// above seq_len means seq_len anyway. Null for a negative value.
fn stepsValue(plain_int: []const u8) ?u64 {
    if (plain_int[0] == '-') return if (std.mem.trimStart(u8, plain_int[1..], "0").len == 0) 0 else null;
    return std.fmt.parseInt(u64, plain_int, 10) catch std.math.maxInt(u64); // digits only: just overflow
}

fn parseBatch(text: []const u8) u64 {
    if (!isPlainInt(text)) usageError("-b expects an integer, got '{s}'", .{text});
    return batchValue(text) orelse usageError("-b {s} is out of range", .{text});
}

/// -b is an integer >= 1 of any number of digits; values past u64 saturate, since everything
/// above seq_len means seq_len anyway. Null for zero or a negative value.
fn batchValue(plain_int: []const u8) ?u64 {
    if (plain_int[0] == '-') return null; // -0 included: zero is out of range too
    const v = std.fmt.parseInt(u64, plain_int, 10) catch return std.math.maxInt(u64); // digits only: just overflow
    return if (v == 0) null else v;
}

fn parseIds(gpa: Allocator, text: []const u8) []const i64 {
    const ids = allocOrDie(gpa, i64, std.mem.countScalar(u8, text, ',') + 1);
    var it = std.mem.splitScalar(u8, text, ',');
    var n: usize = 0;
    while (it.next()) |part| : (n += 1) {
        if (!isPlainInt(part)) usageError("-k expects comma-separated token ids, got '{s}'", .{text});
        // a valid number too large for i64 is no valid id either: the range check refuses it
        ids[n] = std.fmt.parseInt(i64, part, 10) catch -1;
    }
    return ids;
}

pub fn parseArgs(gpa: Allocator, argv: []const []const u8) Args {
    if (argv.len == 0 or std.mem.startsWith(u8, argv[0], "-")) usageError("missing checkpoint", .{});
    var a: Args = .{ .checkpoint = argv[0] };
    const rest = argv[1..];
    if (rest.len % 2 != 0) usageError("flag {s} has no value", .{rest[rest.len - 1]});
    var i: usize = 0;
    while (i < rest.len) : (i += 2) {
        const flag = rest[i];
        const value = rest[i + 1];
        if (std.mem.eql(u8, flag, "-z")) {
            a.tokenizer = value;
        } else if (std.mem.eql(u8, flag, "-t")) {
            a.temperature = parseFloatArg(flag, value, 0, std.math.floatMax(f64));
        } else if (std.mem.eql(u8, flag, "-p")) {
            a.topp = parseFloatArg(flag, value, 0, 1);
        } else if (std.mem.eql(u8, flag, "-s")) {
            a.seed = @intCast(parseIntArg(flag, value, 0, std.math.maxInt(u64)));
        } else if (std.mem.eql(u8, flag, "-n")) {
            a.steps = parseSteps(value);
        } else if (std.mem.eql(u8, flag, "-i")) {
            a.prompt = value;
        } else if (std.mem.eql(u8, flag, "-j")) {
            a.threads = @intCast(parseIntArg(flag, value, 1, 4096));
        } else if (std.mem.eql(u8, flag, "-m")) {
            a.mode = std.meta.stringToEnum(Mode, value) orelse usageError("-m expects generate or logits, got '{s}'", .{value});
        } else if (std.mem.eql(u8, flag, "-o")) {
            a.output = value;
        } else if (std.mem.eql(u8, flag, "-k")) {
            a.ids = parseIds(gpa, value);
        } else if (std.mem.eql(u8, flag, "-e")) {
            a.ignore_bos = parseIntArg(flag, value, 0, 1) == 1;
        } else if (std.mem.eql(u8, flag, "-b")) {
            a.batch = parseBatch(value);
        } else usageError("unknown flag {s}", .{flag});
    }
    if (a.mode == .logits and (a.output == null or a.ids == null)) usageError("logits mode needs -o FILE and -k IDS", .{});
    return a;
}

test "number flags are plain decimal" {
    for ([_][]const u8{ "0", "1.5", "+2", "-0.5", ".5", "5.", "1e5", "2.5E-3", "007" }) |t| try testing.expect(isPlainFloat(t));
    for ([_][]const u8{ "", "inf", "nan", "1_0", " 1", "1 ", "0x10", "e5", ".", "1e", "1e+", "+", "1.2.3" }) |t| try testing.expect(!isPlainFloat(t));
    for ([_][]const u8{ "0", "+7", "-3", "0012" }) |t| try testing.expect(isPlainInt(t));
    for ([_][]const u8{ "", "+", "1.0", "1_0", " 1", "1e3", "x" }) |t| try testing.expect(!isPlainInt(t));
}

test "-n takes any number of digits; -j is in [1, 4096]; -s in [0, 2^64 - 1]" {
    try testing.expectEqual(@as(?u64, 1099511627776), stepsValue("1099511627776"));
    try testing.expectEqual(@as(?u64, std.math.maxInt(u64)), stepsValue("99999999999999999999999999"));
    try testing.expectEqual(@as(?u64, 7), stepsValue("+7"));
    try testing.expectEqual(@as(?u64, 0), stepsValue("-00"));
    try testing.expectEqual(@as(?u64, null), stepsValue("-3"));
    try testing.expectEqual(@as(?i128, 4096), intInRange("4096", 1, 4096));
    try testing.expectEqual(@as(?i128, null), intInRange("4097", 1, 4096));
    try testing.expectEqual(@as(?i128, null), intInRange("0", 1, 4096));
    try testing.expectEqual(@as(?i128, std.math.maxInt(u64)), intInRange("18446744073709551615", 0, std.math.maxInt(u64)));
    try testing.expectEqual(@as(?i128, null), intInRange("18446744073709551616", 0, std.math.maxInt(u64)));
    try testing.expectEqual(@as(?i128, null), intInRange("999999999999999999999999999999999999999999999999999999999999", 0, std.math.maxInt(u64)));
}

test "-b is an integer >= 1 of any number of digits" {
    try testing.expectEqual(@as(?u64, 1), batchValue("1"));
    try testing.expectEqual(@as(?u64, 512), batchValue("+512"));
    try testing.expectEqual(@as(?u64, 7), batchValue("007"));
    try testing.expectEqual(@as(?u64, 1099511627776), batchValue("1099511627776"));
    try testing.expectEqual(@as(?u64, std.math.maxInt(u64)), batchValue("99999999999999999999999999"));
    try testing.expectEqual(@as(?u64, null), batchValue("0"));
    try testing.expectEqual(@as(?u64, null), batchValue("+0"));
    try testing.expectEqual(@as(?u64, null), batchValue("-0"));
    try testing.expectEqual(@as(?u64, null), batchValue("-1"));
    try testing.expect(!isPlainInt("x"));
    try testing.expect(!isPlainInt("1.0"));
    try testing.expect(!isPlainInt(""));
}
