#!/usr/bin/env bash
# What the test suite needs beyond the ports' own toolchains: hyperfine (the harness-cost test),
# a C compiler (the bandwidth probe), Chromium (the HTML report is loaded headless in
# tests/test_html_report.py) and clang with libFuzzer (the C and C++ ports' fuzz harnesses,
# tests/test_fuzz_coverage.py). Containers are set up by scripts/podman-setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/syspkg.sh
sys_install "test tools" "hyperfine build-essential chromium" "hyperfine"
# Debian 12's clang 14; libclang-rt-14-dev holds the libFuzzer and sanitizer runtimes. Elsewhere
# a note: the fuzz tests then skip, or fail under CI=true.
sys_install "clang and libFuzzer" "clang libclang-rt-14-dev" "" ||
  echo "note: no clang/libFuzzer: tests/test_fuzz_coverage.py cannot run its harnesses" >&2
