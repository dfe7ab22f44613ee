#!/bin/sh
# The port's run command (port.toml [run]): the jar on a JVM with the Vector API module. On Linux,
# unless POLYLLAMA_HUGEPAGES=0, the weights go into transparent huge pages: the port reads them
# onto the Java heap (polyllama.hugepages) instead of mapping the file, and
# -XX:+UseTransparentHugePages has the JVM madvise(MADV_HUGEPAGE) that heap. Only where THP is
# "always" or "madvise": with it off, the JVM would print its warning on stdout, the text's stream.
jar="$(dirname "$0")/target/polyllama.jar"
if [ "$(uname -s)" = Linux ] && [ "${POLYLLAMA_HUGEPAGES-}" != 0 ] &&
    grep -qsE '\[(always|madvise)\]' /sys/kernel/mm/transparent_hugepage/enabled; then
    exec java -XX:+UseTransparentHugePages -Dpolyllama.hugepages=true \
        --add-modules jdk.incubator.vector -jar "$jar" "$@"
fi
exec java --add-modules jdk.incubator.vector -jar "$jar" "$@"
