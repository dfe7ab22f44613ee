#!/usr/bin/env bash
# What the test suite needs beyond the ports' own toolchains: hyperfine (the harness-cost test)
# and a C compiler (the bandwidth probe). Containers are set up by scripts/podman-setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/syspkg.sh
sys_install "test tools" "hyperfine build-essential" "hyperfine"
