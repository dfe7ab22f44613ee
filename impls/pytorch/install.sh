#!/usr/bin/env bash
# PyTorch into the orchestrator's virtual environment. PyPI only: on Linux x86_64 the PyPI
# wheel of torch 2.13.0 is the CUDA build and pulls the nvidia-* / triton wheels (about 4 GB
# installed); the port itself only ever uses the CPU.
# The compiled decode step (the default) needs what torch.compile's CPU backend builds with: a
# C++ compiler (Inductor runs `g++`, or $CXX) and the interpreter's own headers, since every
# kernel it generates is a Python extension that includes Python.h. Debian's python3 keeps its
# headers in libpython3.X-dev, which a stock system lacks.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
set -euo pipefail
PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "torch==$PIN"
if [ "$(uname)" != Darwin ]; then
  . "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
  command -v "${CXX:-g++}" >/dev/null 2>&1 || sys_install "a C++ compiler for torch.compile" "g++"
  if ! "$PY" -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('include'), 'Python.h')))"; then
    sys_install "Python's headers for torch.compile" "libpython$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"
  fi
fi
