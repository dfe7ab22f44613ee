#!/usr/bin/env bash
# What `invoke build-all --arch arm64` and `invoke validate --arch arm64` need on a Debian/Ubuntu
# x86-64 host (README, "arm64 under emulation"): qemu-user-static to run linux/arm64 programs, the
# cross gcc/g++ with their static C library, and from Debian's arm64 archive (multiarch) the
# pinned Rust's aarch64 std, the arm64 OpenJDK 17 and the C/C++ runtime the Mojo build links to.
# binfmt_misc is set up too, so an arm64 program also runs by its own name (the manifests call
# qemu-aarch64-static explicitly and do not need it).
# Idempotent; prints nothing when everything is there.
#   bash scripts/arm64-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/syspkg.sh

if [ "$(uname -s)" != Linux ]; then
  echo "arm64-setup: Linux only (on an Apple silicon Mac the ports build and run natively)" >&2; exit 2
fi
if [ "$(uname -m)" = aarch64 ]; then
  exit 0  # an arm64 host runs the native builds; nothing to emulate
fi

# the rustc-web pin of impls/rust/port.toml: its aarch64 std must be the same version
pin=$(sed -n 's/^pin = "\(.*\)"$/\1/p' impls/rust/port.toml)
sys_install "the arm64 cross toolchains and qemu" \
  "qemu-user-static binfmt-support gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross"

if command -v dpkg >/dev/null 2>&1; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    _sudo dpkg --add-architecture arm64  # sys_install's apt-get update then reads the arm64 lists
  fi
  # Multi-Arch: same packages: apt keeps the amd64 and arm64 versions equal (it may upgrade the
  # amd64 JDK or rust std to the archive's current version on the way)
  sys_install "the arm64 libraries (Debian multiarch)" \
    "libc6:arm64 libstdc++6:arm64 libstd-rust-web-dev:arm64 openjdk-17-jre-headless:arm64"
  ver=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64 2>/dev/null || true)
  case "$ver" in
    "$pin".*) ;;
    *) echo "arm64-setup: warning: libstd-rust-web-dev:arm64 is $ver, the Rust pin is $pin" >&2 ;;
  esac
fi

# binfmt_misc: mounted when the kernel has it and nobody did; the qemu-aarch64 handler enabled
binfmt=/proc/sys/fs/binfmt_misc
if [ -d "$binfmt" ] && [ ! -e "$binfmt/register" ]; then
  _sudo mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
fi
if [ -e "$binfmt/register" ] && [ ! -e "$binfmt/qemu-aarch64" ] && command -v update-binfmts >/dev/null 2>&1; then
  _sudo update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
    || _sudo update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
fi
exit 0
