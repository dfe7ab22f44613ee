#!/usr/bin/env bash
# The Mojo toolchain (the `mojo` compiler and the MAX runtime libraries it links against) from
# PyPI, into the orchestrator's virtual environment, whose bin/ comes first on PATH.
# usage: bash install.sh PYTHON PIN   (the orchestrator passes {python} and port.toml's pin)
#        bash install.sh --arm64-libs PYTHON PIN DIR
#            the same runtime libraries for linux/aarch64 (PyPI's manylinux aarch64 wheels of the
#            same versions) into DIR, for port.toml's [cross.arm64] build to link against and
#            run with under qemu; does nothing when they are there
set -euo pipefail
MAX_CORE=26.7.0
RUNTIME_LIBS="libKGENCompilerRTShared.so libAsyncRTMojoBindings.so libAsyncRTRuntimeGlobals.so libMSupportGlobals.so"

if [ "${1:-}" = --arm64-libs ]; then
  PY="${2:?usage: install.sh --arm64-libs PYTHON PIN DIR}" PIN="${3:?}" DIR="${4:?}"
  missing=0
  for lib in $RUNTIME_LIBS; do [ -f "$DIR/$lib" ] || missing=1; done
  ((missing)) || exit 0
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --platform manylinux_2_34_aarch64 -d "$wheels" "mojo-compiler==$PIN" "max-core==$MAX_CORE"
  mkdir -p "$DIR"
  # only the four libraries a Mojo executable needs, not the wheels' compilers (about 600 MB unpacked)
  "$PY" - "$wheels" "$DIR" $RUNTIME_LIBS <<'PY'
import sys, zipfile
from pathlib import Path
wheels, out, wanted = Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3:])
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.rsplit("/", 1)[-1] in wanted and "/modular/lib/" in name:
                (out / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
                wanted.discard(name.rsplit("/", 1)[-1])
if wanted:
    sys.exit(f"error: not in the aarch64 wheels: {', '.join(sorted(wanted))}")
PY
  exit 0
fi

PY="${1:?usage: install.sh PYTHON PIN}" PIN="${2:?usage: install.sh PYTHON PIN}"
"$PY" -m pip install --disable-pip-version-check "mojo==$PIN" "max-core==$MAX_CORE"
