#!/usr/bin/env bash
# The Zig toolchain from PyPI (the `ziglang` package ships the compiler and its std library),
# into the orchestrator's virtual environment.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "ziglang==$PIN"
