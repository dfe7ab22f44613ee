#!/usr/bin/env bash
# Installs the Java port's toolchain: a JDK >= 17 (with javac and the jdk.incubator.vector
# module) and Maven, from Debian apt. Idempotent: a no-op when both already work. Maven fetches
# the build plugins and JUnit from Maven Central on the first build.
set -euo pipefail
have_jdk() {
    command -v javac >/dev/null 2>&1 && java --add-modules jdk.incubator.vector -version >/dev/null 2>&1
}
if have_jdk && command -v mvn >/dev/null 2>&1; then
    echo "Java toolchain already installed: $(java -version 2>&1 | head -1), $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: need a JDK >= 17 and Maven on PATH (no apt-get here to install them)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
packages=()
have_jdk || packages+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
echo "installing ${packages[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
