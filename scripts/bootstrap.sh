# Sourced by ./run: a Python >= 3.11 (installed from the system's package manager when there is
# none), the project's virtual environment in .venv, and the project installed into it.
# Nothing is pip-installed into the system interpreter (PEP 668). Sets VENV_PY.
. scripts/lib/syspkg.sh

_py_ok() {  # a Python >= 3.11 that can make a virtual environment with pip in it
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
  local c
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    command -v "$c" >/dev/null 2>&1 && _py_ok "$c" && { command -v "$c"; return 0; }
  done
  return 1
}

install_python() {
  if [ "$(uname)" = Darwin ]; then
    sys_install "Python 3.12" "" "python@3.12" || return 1
    PATH="$(brew --prefix python@3.12)/bin:$PATH"; export PATH
    return 0
  fi
  # Debian 12 and Ubuntu 24.04 ship a python3 that is new enough but lacks venv/ensurepip;
  # older releases need the versioned package.
  sys_install "Python" "python3 python3-venv" || return 1
  if ! _py_ok python3; then
    local v
    for v in 3.12 3.11; do
      if apt-cache show "python$v-venv" >/dev/null 2>&1; then sys_install "Python $v" "python$v python$v-venv" && return 0; fi
    done
    echo "error: no Python >= 3.11 in this system's packages; install one and set PYTHON=/path/to/python3" >&2
    return 1
  fi
}

VENV=.venv
VENV_PY=$VENV/bin/python
if [ ! -x "$VENV_PY" ] || ! _py_ok "$VENV_PY"; then
  base=$(find_python) || { install_python && base=$(find_python); } || {
    echo "error: need Python >= 3.11 with venv; none found or installable" >&2; exit 1; }
  echo "setup: creating $VENV with $base ($("$base" --version 2>&1))" >&2
  rm -rf "$VENV"
  "$base" -m venv "$VENV"
fi
# Reinstalled whenever pyproject.toml changes (its checksum is kept in the venv), so a new
# dependency reaches every existing .venv without a list of imports to keep in step.
stamp="$VENV/.polyllama-pyproject"
want=$(cksum pyproject.toml)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV_PY" -c "import orchestrator" 2>/dev/null; then
  echo "setup: pip install -e .[test] into $VENV (numpy, scipy, pydantic, matplotlib, ... about 250 MB)" >&2
  "$VENV_PY" -m pip install -q --disable-pip-version-check -e ".[test]" >&2
  echo "$want" >"$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
