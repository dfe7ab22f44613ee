#!/usr/bin/env bash
# TensorFlow's CPU-only wheel into the orchestrator's virtual environment. PyPI only.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "tensorflow-cpu==$PIN"
