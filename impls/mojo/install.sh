#!/usr/bin/env bash
# Installs the Mojo toolchain (the `mojo` compiler and the MAX runtime libraries it
# links against) from PyPI into the Python environment that runs this script. The
# orchestrator puts that environment's bin/ first on PATH, so `mojo` is found there.
# Idempotent: a second run only checks the installed versions.
set -euo pipefail
PY="${PYTHON:-python3}"
MOJO_VERSION=1.2.0
MAX_VERSION=26.7.0

installed() {
    local info
    info="$("$PY" -m pip show "$1" 2>/dev/null || true)"
    [[ "$info" == *$'\n'"Version: $2"$'\n'* ]]
}

if installed mojo "$MOJO_VERSION" && installed max-core "$MAX_VERSION"; then
    echo "mojo $MOJO_VERSION and max-core $MAX_VERSION already installed"
    exit 0
fi
"$PY" -m pip install --disable-pip-version-check "mojo==$MOJO_VERSION" "max-core==$MAX_VERSION"
