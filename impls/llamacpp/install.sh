#!/usr/bin/env bash
# llama-cpp-python, which compiles llama.cpp from source, into the orchestrator's virtual
# environment; needs a C++ compiler and CMake first.
# usage: bash install.sh PYTHON   (the orchestrator passes {python})
set -euo pipefail
PY="${1:?usage: install.sh PYTHON}"
VERSION="0.3.36"
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "llama.cpp's build tools" "g++ cmake" "cmake"
# CPU-only build tuned for this machine: no GPU back ends, no BLAS (ggml's own kernels), no
# libcurl (we never download models), no examples/tests/server.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "building llama-cpp-python $VERSION from source with CMAKE_ARGS=$CMAKE_ARGS"
"$PY" -m pip install --disable-pip-version-check --no-cache-dir --verbose "llama-cpp-python==$VERSION" 2>&1 \
  | grep --line-buffered -E '^\s*\[ *[0-9]+%\]|Successfully|error|Error' || true
"$PY" -c "import llama_cpp" 2>/dev/null
