#!/usr/bin/env bash
# Installs TensorFlow's CPU-only wheel into the orchestrator's interpreter. Idempotent: a
# no-op when the pinned version already imports. PyPI only.
set -euo pipefail
PY="${1:-${PYTHON:-python3}}"  # the orchestrator passes {python}
VERSION="2.21.0"
if TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c "import tensorflow as tf, sys; sys.exit(0 if tf.__version__ == '$VERSION' else 1)" 2>/dev/null; then
    echo "tensorflow-cpu $VERSION already installed"
    exit 0
fi
"$PY" -m pip install "tensorflow-cpu==$VERSION"
