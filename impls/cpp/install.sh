#!/usr/bin/env bash
# Installs the C++ port's toolchain from Debian apt: g++ (C++20), CMake, Ninja, GoogleTest.
# Idempotent: a no-op when every package is already installed.
# `install.sh --check` is the manifest's toolchain check: exit 0 and one version line when
# the compiler, CMake and Ninja are on PATH (GoogleTest is needed by the tests only).
set -euo pipefail
if [ "${1:-}" = "--check" ]; then
    command -v cmake >/dev/null && command -v ninja >/dev/null && command -v c++ >/dev/null || exit 1
    echo "$(c++ --version | head -n1), cmake $(cmake --version | head -n1 | awk '{print $3}'), ninja $(ninja --version)"
    exit 0
fi
PACKAGES=(g++ cmake ninja-build libgtest-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "C++ toolchain already installed: ${PACKAGES[*]}"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
