#!/usr/bin/env bash
# The Java port's toolchain: a JDK >= 17 (javac and the jdk.incubator.vector module) and Maven.
# Maven fetches the build plugins and JUnit from Maven Central on the first build.
set -euo pipefail
. "$POLYLLAMA_ROOT/scripts/lib/syspkg.sh"
sys_install "the Java toolchain" "openjdk-17-jdk-headless maven" "openjdk@17 maven"
