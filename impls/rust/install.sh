#!/usr/bin/env bash
# The Rust port's toolchain. Debian 12's plain cargo is 1.65; its cargo-web/rustc-web packages
# are 1.96 (/usr/bin/cargo), the version the Dockerfile uses too. macOS: Homebrew's rust.
set -euo pipefail
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "the Rust toolchain" "cargo-web rustc-web" "rust"
