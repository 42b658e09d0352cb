#!/usr/bin/env bash
# apt_install.sh WHY PACKAGE...: installs Debian packages (without recommends), refreshing the
# package lists only when the first try fails. Needs root (as CI has); otherwise says what to run.
set -euo pipefail
why=$1
shift
if [ "$(id -u)" != 0 ]; then
  echo "missing $* and this is not root: sudo apt-get install $*" >&2
  exit 1
fi
echo "installing $* (Debian) for $why"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends "$@" >/dev/null
}
