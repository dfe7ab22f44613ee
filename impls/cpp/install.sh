#!/usr/bin/env bash
# The C++ port's toolchain: a C++20 compiler, CMake, Ninja and GoogleTest (for its unit tests).
# `install.sh --check` is the manifest's toolchain check: exit 0 and one version line when the
# compiler, CMake and Ninja are on PATH.
set -euo pipefail
if [ "${1:-}" = "--check" ]; then
    command -v cmake >/dev/null && command -v ninja >/dev/null && command -v c++ >/dev/null || exit 1
    echo "$(c++ --version | head -n1), cmake $(cmake --version | head -n1 | awk '{print $3}'), ninja $(ninja --version)"
    exit 0
fi
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "the C++ toolchain" "g++ cmake ninja-build libgtest-dev" "cmake ninja googletest"
