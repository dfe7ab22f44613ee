#!/usr/bin/env bash
# The C port's toolchain: a C11 compiler and make (Debian/Ubuntu: build-essential; macOS: the
# Xcode command line tools, which only Apple's installer provides).
set -euo pipefail
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
if [ "$(uname)" = Darwin ]; then
  echo "error: no C compiler: run \`xcode-select --install\` (Apple's command line tools)" >&2; exit 1
fi
sys_install "the C toolchain" "build-essential"
