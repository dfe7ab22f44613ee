#!/usr/bin/env bash
# Installs a Go toolchain (>= 1.19, what go.mod asks for) if none is on PATH. Idempotent: a
# no-op when `go version` already works. Installs only from the system package registry (apt).
set -euo pipefail
if command -v go >/dev/null 2>&1; then
    echo "$(go version) already installed"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q golang-go
    go version
    exit 0
fi
echo "error: no Go toolchain on PATH and no apt-get or brew to install one; install Go >= 1.19" >&2
exit 1
