#!/usr/bin/env bash
# A Docker-compatible engine on a Linux host without Docker: podman + runc, configured per
# invocation (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF) in a folder of polyllama's own, so that
# nothing under /etc/containers is written; and a local Debian base image made with debootstrap
# (no image registry is needed).
#   bash scripts/podman-setup.sh                install, configure, make the base image; prints the folder
#   bash scripts/podman-setup.sh --arch arm64   the same, and a linux/arm64 base image too (debootstrap
#                                               under qemu: run scripts/arm64-setup.sh first)
# The API service is not left running: orchestrator/containers/podman.py starts it for the tests and the
# --docker tasks and stops it after (see the README's container section).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/syspkg.sh

DIR=${POLYLLAMA_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/polyllama/podman}
BASE_TAG=${POLYLLAMA_BASE_IMAGE:-localhost/polyllama-base:bookworm-stock}
ARCH=amd64
if [ "${1:-}" = --arch ]; then
  case "${2:-}" in
    arm64) ARCH=arm64; BASE_TAG=$BASE_TAG-arm64 ;;
    amd64|"") ;;
    *) echo "error: podman-setup: --arch must be arm64 or amd64, got '${2:-}'" >&2; exit 2 ;;
  esac
fi
MIRROR=${POLYLLAMA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${POLYLLAMA_DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

if [ "$(uname)" != Linux ]; then
  echo "podman-setup: Linux only; on macOS use Docker Desktop or podman machine" >&2; exit 2
fi
sys_install "podman" "podman runc debootstrap" >&2
mkdir -p "$DIR"

# Settings that work on hosts whose cgroups crun cannot drive: cgroupfs, runc, file events.
cat >"$DIR/containers.conf" <<CONF
# written by polyllama scripts/podman-setup.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF

storage_conf() {  # $1 = driver
  cat <<CONF
# written by polyllama scripts/podman-setup.sh
[storage]
driver = "$1"
runroot = "$DIR/run"
graphroot = "$DIR/storage"
CONF
}
export CONTAINERS_CONF="$DIR/containers.conf" CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
# overlay shares layers between images; vfs copies each one whole (tens of GB for the full
# image), so it is only the fallback for kernels or file systems without overlay.
if [ ! -f "$DIR/storage.conf" ]; then
  storage_conf overlay >"$DIR/storage.conf"
  if ! podman info >/dev/null 2>"$DIR/overlay-check.log"; then
    echo "podman-setup: overlay storage does not work here ($(tail -n1 "$DIR/overlay-check.log")); using vfs" >&2
    rm -rf "$DIR/storage" "$DIR/run"
    storage_conf vfs >"$DIR/storage.conf"
  fi
fi

# A local base image: a minimal Debian root made with debootstrap from Debian's own mirror, with
# the apt suites of a stock image. (The tag changed when the suites were added, so that older
# base images with bookworm alone are not reused.)
if ! podman image exists "$BASE_TAG"; then
  if [ "$ARCH" != "$(dpkg --print-architecture 2>/dev/null || echo amd64)" ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "error: podman-setup: an $ARCH base needs qemu's binfmt handler (run scripts/arm64-setup.sh)" >&2; exit 1
  fi
  root=$(mktemp -d /tmp/polyllama-rootfs.XXXXXX)
  echo "podman-setup: debootstrap bookworm ($ARCH) into $root (a few minutes; far longer under emulation)" >&2
  if ! debootstrap --arch="$ARCH" --variant=minbase bookworm "$root" "$MIRROR" >"$DIR/debootstrap-$ARCH.log" 2>&1; then
    echo "error: debootstrap failed: $(tail -n1 "$DIR/debootstrap-$ARCH.log") (log: $DIR/debootstrap-$ARCH.log)" >&2
    rm -rf "$root"; exit 1
  fi
  # the suites a stock debian:bookworm image lists: without bookworm-security, apt offers
  # cargo-web 1.85 instead of the pinned 1.96 (../TOOLCHAINS.md), and the image's Rust would not
  # be the host's
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
  tar -C "$root" -c . | podman import --arch "$ARCH" - "$BASE_TAG" >/dev/null
  rm -rf "$root"
fi
echo "$DIR"
