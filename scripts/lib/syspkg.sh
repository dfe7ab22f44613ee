# Sourced by installers: system packages from apt (Debian/Ubuntu) or Homebrew (macOS), or one
# line naming what to install by hand. Never calls apt-get or dpkg on a system without them.
#
#   sys_install WHAT "DEBIAN PACKAGES" "BREW FORMULAE"
#
# Returns 0 when everything is present or was installed, 1 (with one error line) otherwise.

_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
  echo "error: need root (or sudo) to run: $*" >&2; return 1; fi; }

sys_install() {
  local what=$1 apt_pkgs=$2 brew_pkgs=${3:-} missing=() p
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    for p in $apt_pkgs; do
      [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "installing $what from apt: ${missing[*]}" >&2
    # A fresh image has no package lists; an old list can name versions the mirror no longer has.
    _sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive _sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "${missing[@]}" >&2 || { echo "error: apt-get could not install ${missing[*]}" >&2; return 1; }
  elif [ "$(uname)" = Darwin ] && command -v brew >/dev/null 2>&1 && [ -n "$brew_pkgs" ]; then
    for p in $brew_pkgs; do brew list --versions "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    echo "installing $what with Homebrew: ${missing[*]}" >&2
    brew install "${missing[@]}" >&2 || { echo "error: brew could not install ${missing[*]}" >&2; return 1; }
  elif [ "$(uname)" = Darwin ] && [ -n "$brew_pkgs" ]; then
    echo "error: $what: install Homebrew (https://brew.sh), then: brew install $brew_pkgs" >&2; return 1
  else
    echo "error: $what: no apt-get here; install it by hand (Debian names: $apt_pkgs)" >&2; return 1
  fi
}
