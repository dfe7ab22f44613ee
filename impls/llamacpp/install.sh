#!/usr/bin/env bash
# Installs llama-cpp-python (which compiles llama.cpp from source) into the
# orchestrator's interpreter. Idempotent: a no-op when the pinned version imports.
set -euo pipefail
PY="${1:-${PYTHON:-python3}}"  # the orchestrator passes {python}
VERSION="0.3.36"
if "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already installed"
    exit 0
fi
# CPU-only build tuned for this machine: no GPU back ends, no BLAS (ggml's own
# kernels), no libcurl (we never download models), no examples/tests/server.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "building llama-cpp-python $VERSION with CMAKE_ARGS=$CMAKE_ARGS"
"$PY" -m pip install --no-cache-dir "llama-cpp-python==$VERSION"
