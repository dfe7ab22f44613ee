#!/usr/bin/env bash
# The Zig toolchain from PyPI (the `ziglang` package ships the compiler and its std library),
# into the orchestrator's virtual environment.
# usage: bash install.sh PYTHON   (the orchestrator passes {python})
set -euo pipefail
PY="${1:?usage: install.sh PYTHON}"
"$PY" -m pip install --disable-pip-version-check "ziglang==0.17.1"
