#!/usr/bin/env bash
# The llama.cpp peer's toolchain: llama.cpp's source and the tools to compile it.
#
# The source is the vendor/llama.cpp tree of the llama-cpp-python sdist on PyPI (the only
# registry that ships llama.cpp's source), unpacked into build/src/llama.cpp; cmake, make and a
# C++ compiler come from the system's packages.
#
#   bash install.sh PYTHON    fetch and unpack the source (idempotent), install the build tools
#   bash install.sh --check   exit 0 and print one version line when all of it is present
set -euo pipefail
SDIST_VERSION="0.3.36"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/build/src/llama.cpp"
STAMP="$SRC/POLYLLAMA_SOURCE"  # written last: its presence means the unpack completed

present() {
    [ -f "$STAMP" ] && [ -f "$SRC/include/llama.h" ] && [ -f "$SRC/tools/llama-bench/llama-bench.cpp" ] \
        && command -v cmake >/dev/null && command -v make >/dev/null && command -v c++ >/dev/null
}

if [ "${1:-}" = "--check" ]; then
    present || exit 1
    commit="$(sed -n 's/^commit=//p' "$STAMP")"
    echo "llama.cpp ${commit:0:9} from llama-cpp-python $SDIST_VERSION sdist, cmake $(cmake --version | head -n1 | awk '{print $3}'), $(c++ --version | head -n1)"
    exit 0
fi
PY="${1:?usage: install.sh PYTHON | install.sh --check}"

. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "llama.cpp's build tools" "g++ cmake make" "cmake"

if [ -f "$STAMP" ]; then
    echo "llama.cpp source already in $SRC"
    exit 0
fi
tmp="$(mktemp -d "$HERE/build.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching the llama-cpp-python $SDIST_VERSION sdist from PyPI (about 75 MB) for its llama.cpp source"
"$PY" -m pip download --disable-pip-version-check --no-cache-dir --no-deps --no-binary :all: \
    -d "$tmp" "llama-cpp-python==$SDIST_VERSION" >&2
sdist="$tmp/llama_cpp_python-$SDIST_VERSION.tar.gz"
[ -f "$sdist" ] || { echo "error: pip did not save $(basename "$sdist")" >&2; exit 1; }
top="llama_cpp_python-$SDIST_VERSION"
tar -xzf "$sdist" -C "$tmp" "$top/vendor/llama.cpp" "$top/.git/modules/vendor/llama.cpp/HEAD"
tree="$tmp/$top/vendor/llama.cpp"
[ -f "$tree/tools/llama-bench/llama-bench.cpp" ] \
    || { echo "error: the sdist's vendor/llama.cpp has no tools/llama-bench" >&2; exit 1; }
commit="$(tr -d '[:space:]' < "$tmp/$top/.git/modules/vendor/llama.cpp/HEAD")"
# a submodule pointer to a git directory that is not unpacked: llama.cpp's CMake would call git on it
rm -f "$tree/.git"
printf 'commit=%s\nsdist=llama-cpp-python %s\n' "$commit" "$SDIST_VERSION" > "$tree/POLYLLAMA_SOURCE.part"
rm -rf "$SRC"
mkdir -p "$(dirname "$SRC")"
mv "$tree" "$SRC"
mv "$SRC/POLYLLAMA_SOURCE.part" "$STAMP"
echo "llama.cpp $commit unpacked into $SRC"
