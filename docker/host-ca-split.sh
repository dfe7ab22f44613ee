#!/bin/sh
# The build host's own CAs (a TLS-inspecting proxy's) as one file each in
# /usr/local/share/ca-certificates, then update-ca-certificates. docker/certs/host-ca.crt is the
# host's whole bundle; the base stage trusts it as one file, which serves OpenSSL's tools (pip,
# cargo, go, git), but Java's trust store is built one file, one certificate: keytool and
# ca-certificates-java read only the first certificate of a file, so Maven saw none of the
# proxy's CAs. Only the certificates Debian does not ship itself are split out.
set -eu
src=/opt/certs/host-ca.crt
[ -s "$src" ] || exit 0
cat /usr/share/ca-certificates/mozilla/*.crt > /tmp/debian-cas.pem
awk -v dir=/usr/local/share/ca-certificates '
  BEGIN { RS = "-----END CERTIFICATE-----" }
  { i = index($0, "-----BEGIN"); if (!i) next; b = substr($0, i) }
  NR == FNR { seen[b]; next }
  !(b in seen) { n++; f = dir "/polyllama-host-" n ".crt"; print b RS > f; close(f) }
  END { print "host-ca-split: " n + 0 " certificates not shipped by Debian" > "/dev/stderr" }
' /tmp/debian-cas.pem "$src"
rm -f /tmp/debian-cas.pem /usr/local/share/ca-certificates/polyllama-host-ca.crt
update-ca-certificates >/dev/null
