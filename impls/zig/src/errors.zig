//! Errors: every failure is one `error:` line on stderr and the contract's exit code
//! (docs/port-contract.md, section 3). Nothing panics on bad input: these functions end the
//! process instead, and a reader's refusal (a `model.Diag`) ends here too.

const std = @import("std");
const Allocator = std.mem.Allocator;
const model = @import("model.zig");

const USAGE = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] " ++
    "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BAD_FILE: u8 = 3;

pub fn usageError(comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: " ++ fmt ++ "\n" ++ USAGE ++ "\n", args);
    std.process.exit(EXIT_USAGE);
}

pub fn badFile(path: []const u8, comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: {s}: " ++ fmt ++ "\n", .{path} ++ args);
    std.process.exit(EXIT_BAD_FILE);
}

pub fn runtimeError(comptime fmt: []const u8, args: anytype) noreturn {
    std.debug.print("error: " ++ fmt ++ "\n", args);
    std.process.exit(EXIT_RUNTIME);
}

pub fn outOfMemory() noreturn {
    runtimeError("out of memory", .{});
}

pub fn allocOrDie(gpa: Allocator, comptime T: type, n: usize) []T {
    return gpa.alloc(T, n) catch outOfMemory();
}

/// A reader's refusal (or its failed allocation) as the contract's error line and exit code.
pub fn readFailed(err: model.ReadError, diag: *const model.Diag) noreturn {
    switch (err) {
        error.BadFile => badFile(diag.path, "{s}", .{diag.problem()}),
        error.OutOfMemory => outOfMemory(),
    }
}
