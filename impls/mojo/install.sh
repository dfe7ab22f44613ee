#!/usr/bin/env bash
# The Mojo toolchain (the `mojo` compiler and the MAX runtime libraries it links against) from
# PyPI, into the orchestrator's virtual environment, whose bin/ comes first on PATH.
# usage: bash install.sh PYTHON   (the orchestrator passes {python})
set -euo pipefail
PY="${1:?usage: install.sh PYTHON}"
"$PY" -m pip install --disable-pip-version-check "mojo==1.2.0" "max-core==26.7.0"
