#!/usr/bin/env bash
# Installs PyTorch into the orchestrator's interpreter. Idempotent: a no-op when the pinned
# version already imports. PyPI only: on Linux x86_64 the PyPI wheel of torch 2.13.0 is the
# CUDA build and pulls the nvidia-* / triton wheels (about 4 GB installed); the port itself
# only ever uses the CPU.
set -euo pipefail
PY="${1:-${PYTHON:-python3}}"  # the orchestrator passes {python}
VERSION="2.13.0"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$VERSION' else 1)" 2>/dev/null; then
    echo "torch $VERSION already installed"
    exit 0
fi
"$PY" -m pip install "torch==$VERSION"
