//! polyllama's Zig port: `zig build -Doptimize=ReleaseFast` -> zig-out/bin/run,
//! `zig build test -Doptimize=ReleaseSafe` -> the unit tests of every file under src/, which
//! main.zig's last test block pulls in.
const std = @import("std");

pub fn build(b: *std.Build) void {
    // Native CPU by default: the SIMD width of the kernels follows the host (AVX-512, AVX2, NEON).
    // On x86-64, LLVM's tuning for AVX-512 Xeons (prefer_256_bit) would still split each 16-lane
    // vector into two 256-bit halves; without it the f32 matmul loads a whole cache line at a
    // time (measured in the port's README, "Performance levers").
    var query = b.standardTargetOptionsQueryOnly(.{});
    if (query.isNative() and @import("builtin").cpu.arch == .x86_64) {
        query.cpu_model = .native; // a feature change alone would make the query a baseline CPU
        query.cpu_features_sub.addFeature(@intFromEnum(std.Target.x86.Feature.prefer_256_bit));
    }
    const target = b.resolveTargetQuery(query);
    const optimize = b.standardOptimizeOption(.{});

    const root = b.createModule(.{
        .root_source_file = b.path("src/main.zig"),
        .target = target,
        .optimize = optimize,
    });
    const exe = b.addExecutable(.{ .name = "run", .root_module = root });
    b.installArtifact(exe);

    const run_cmd = b.addRunArtifact(exe);
    run_cmd.step.dependOn(b.getInstallStep());
    run_cmd.addPassthruArgs();
    b.step("run", "Run the model").dependOn(&run_cmd.step);

    const tests = b.addTest(.{ .root_module = root });
    const run_tests = b.addRunArtifact(tests);
    // the tests read $POLYLLAMA_MODEL_PATH and $CI, which the step cache does not see
    run_tests.has_side_effects = true;
    b.step("test", "Run the unit tests").dependOn(&run_tests.step);
}
