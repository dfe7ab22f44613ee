#!/usr/bin/env bash
# PyTorch into the orchestrator's virtual environment. PyPI only: on Linux x86_64 the PyPI
# wheel of torch 2.13.0 is the CUDA build and pulls the nvidia-* / triton wheels (about 4 GB
# installed); the port itself only ever uses the CPU.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "torch==$PIN"
