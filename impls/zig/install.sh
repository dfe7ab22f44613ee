#!/usr/bin/env bash
# Installs the Zig toolchain from PyPI (the `ziglang` package ships the compiler and its std
# library). Idempotent: a matching install is detected and left alone.
# usage: bash install.sh [python]   (default: python3; the orchestrator passes {python})
set -euo pipefail
PY="${1:-python3}"
ZIG_VERSION="0.17.1"
if [ "$("$PY" -m ziglang version 2>/dev/null || true)" = "$ZIG_VERSION" ]; then
    echo "zig $ZIG_VERSION already installed for $PY"
    exit 0
fi
"$PY" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIG_VERSION"
echo "zig $("$PY" -m ziglang version) installed for $PY"
