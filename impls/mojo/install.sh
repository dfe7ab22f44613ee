#!/usr/bin/env bash
# The Mojo toolchain (the `mojo` compiler and the MAX runtime libraries it links against) from
# PyPI, into the orchestrator's virtual environment, whose bin/ comes first on PATH.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "mojo==$PIN" "max-core==26.7.0"
