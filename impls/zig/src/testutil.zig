//! Test helpers: finding the real model files, which the tests that need them skip without
//! (with the reason on stderr) outside CI and fail without under CI=true.

const std = @import("std");
const Io = std.Io;
const testing = std.testing;

/// tokenizer.bin etc. from the orchestrator's search path: $POLYLLAMA_MODEL_PATH
/// (':'-separated directories), then the repository's models/ folder (`zig build test` runs in
/// impls/zig). The caller frees the path.
pub fn findModelFile(name: []const u8) ![]const u8 {
    const dirs = testing.environ.getPosix("POLYLLAMA_MODEL_PATH") orelse "";
    var it = std.mem.splitScalar(u8, dirs, ':');
    while (it.next()) |dir| {
        if (dir.len == 0) continue;
        if (try existing(dir, name)) |path| return path;
    }
    if (try existing("../../models", name)) |path| return path;
    const ci = testing.environ.getPosix("CI") orelse "";
    if (std.mem.eql(u8, ci, "true")) {
        std.debug.print("{s} not found in POLYLLAMA_MODEL_PATH or ../../models (required when CI=true)\n", .{name});
        return error.ModelFileMissing;
    }
    std.debug.print("skipped: {s} not found in POLYLLAMA_MODEL_PATH or ../../models\n", .{name});
    return error.SkipZigTest;
}

/// A text of tests/data/golden/ (written by the reference): a run's whole stdout, less the
/// closing newline that the caller of generate prints. The caller frees it.
pub fn golden(gpa: std.mem.Allocator, name: []const u8) ![]const u8 {
    const path = try std.fs.path.join(gpa, &.{ "../../tests/data/golden", name });
    defer gpa.free(path);
    const text = try Io.Dir.cwd().readFileAlloc(testing.io, path, gpa, .limited(1 << 16));
    try testing.expect(text.len > 0 and text[text.len - 1] == '\n');
    return text[0 .. text.len - 1];
}

fn existing(dir: []const u8, name: []const u8) !?[]const u8 {
    const path = try std.fs.path.join(testing.allocator, &.{ dir, name });
    if (Io.Dir.cwd().access(testing.io, path, .{})) |_| return path else |_| testing.allocator.free(path);
    return null;
}
