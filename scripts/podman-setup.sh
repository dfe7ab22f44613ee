#!/usr/bin/env bash
# A Docker-compatible engine on a Debian host without Docker: podman + runc, serving the Docker
# API on a unix socket, and a local Debian base image (no image registry is needed).
#   bash scripts/podman-setup.sh          install, configure, start; prints the DOCKER_HOST to use
# Settings that work on hosts whose cgroups crun cannot drive: cgroupfs, runc, file events, vfs.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCK=${POLYLLAMA_PODMAN_SOCKET:-/run/polyllama-podman.sock}
BASE_TAG=${POLYLLAMA_BASE_IMAGE:-localhost/polyllama-base:bookworm}
MIRROR=${POLYLLAMA_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(uname)" != Linux ]; then
  echo "podman-setup: Linux only; on macOS use Docker Desktop or podman machine" >&2; exit 2
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

need=()
for p in podman runc debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  echo "podman-setup: apt-get install ${need[*]}" >&2
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi

$SUDO mkdir -p /etc/containers
if ! grep -q polyllama /etc/containers/containers.conf 2>/dev/null; then
  $SUDO tee /etc/containers/containers.conf >/dev/null <<'CONF'
# written by polyllama scripts/podman-setup.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
fi
if ! grep -q polyllama /etc/containers/storage.conf 2>/dev/null; then
  $SUDO tee /etc/containers/storage.conf >/dev/null <<'CONF'
# written by polyllama scripts/podman-setup.sh
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
if [ ! -f /etc/containers/policy.json ]; then
  echo '{"default": [{"type": "insecureAcceptAnything"}]}' | $SUDO tee /etc/containers/policy.json >/dev/null
fi

# The API service, once.
if ! curl -s --unix-socket "$SOCK" http://d/_ping 2>/dev/null | grep -q OK; then
  $SUDO rm -f "$SOCK"
  nohup $SUDO podman system service --time=0 "unix://$SOCK" >/tmp/polyllama-podman-service.log 2>&1 &
  for _ in $(seq 50); do
    curl -s --unix-socket "$SOCK" http://d/_ping 2>/dev/null | grep -q OK && break
    sleep 0.2
  done
fi

# A local base image: a minimal Debian root made with debootstrap from Debian's own mirror.
if ! $SUDO podman image exists "$BASE_TAG"; then
  root=$(mktemp -d /tmp/polyllama-rootfs.XXXXXX)
  echo "podman-setup: debootstrap bookworm into $root (a few minutes)" >&2
  $SUDO debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/tmp/polyllama-debootstrap.log 2>&1
  $SUDO tar -C "$root" -c . | $SUDO podman import - "$BASE_TAG" >/dev/null
  $SUDO rm -rf "$root"
fi
echo "unix://$SOCK"
