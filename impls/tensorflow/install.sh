#!/usr/bin/env bash
# TensorFlow's CPU-only wheel into the orchestrator's virtual environment. PyPI only.
# usage: bash install.sh PYTHON   (the orchestrator passes {python})
set -euo pipefail
PY="${1:?usage: install.sh PYTHON}"
"$PY" -m pip install --disable-pip-version-check "tensorflow-cpu==2.21.0"
