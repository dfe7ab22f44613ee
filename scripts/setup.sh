#!/usr/bin/env bash
# Installs what polyllama needs on a fresh Debian/Ubuntu or macOS machine: system packages,
# the Python package (editable), then every toolchain a port declares (`invoke install`).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PACKAGES=(hyperfine build-essential cmake ninja-build)

need_apt=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
  done
  if ((${#need_apt[@]})); then
    echo "setup: apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_apt[@]}" >/dev/null
  fi
elif [ "$(uname)" = Darwin ] && command -v brew >/dev/null 2>&1; then
  command -v hyperfine >/dev/null || brew install hyperfine cmake ninja
fi

if ! "$PY" -c "import orchestrator, invoke, pydantic, numpy, psutil, tabulate, gguf, matplotlib, docker, pytest" 2>/dev/null \
   || ! "$PY" -m pip show -q polyllama >/dev/null 2>&1; then
  echo "setup: pip install -e .[test]"
  "$PY" -m pip install -q -e ".[test]"
fi

# Port toolchains (Mojo, Zig, frameworks, ...) come from each port's own install script.
"$PY" -m invoke install
