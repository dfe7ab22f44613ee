#!/usr/bin/env bash
# The Rust port's toolchain, pinned (port.toml [toolchain] pin): Debian 12's cargo-web/rustc-web
# (the plain `cargo` package is 1.65), the version the Dockerfile's rust stage installs too.
# A machine may have another Rust first on PATH (rustup's): the pinned one is found among every
# cargo on PATH and in /usr/bin, and the build runs it with its own rustc.
#   install.sh --check PIN          the toolchain check: prints the pinned cargo's version, or exits 1
#   install.sh --cargo PIN ARGS...  runs the pinned cargo (build, test)
#   install.sh PYTHON PIN           installs it (apt, or Homebrew's rust on macOS)
set -euo pipefail

pinned_cargo() {  # the first cargo whose version is the pin
  local c
  for c in $(type -ap cargo) /usr/bin/cargo; do
    [ -x "$c" ] && "$c" --version 2>/dev/null | grep -q "^cargo $1[. ]" && { echo "$c"; return 0; }
  done
  return 1
}

case "${1:-}" in
  --check)
    cargo=$(pinned_cargo "$2") || exit 1
    echo "$("$cargo" --version) at $cargo"; exit 0 ;;
  --cargo)
    pin=$2; shift 2
    cargo=$(pinned_cargo "$pin") || { echo "error: no cargo $pin (run invoke install --ports rust)" >&2; exit 1; }
    RUSTC="$(dirname "$cargo")/rustc" exec "$cargo" "$@" ;;
esac
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "the Rust toolchain ($2)" "cargo-web rustc-web" "rust"
