#!/usr/bin/env bash
# Installs runc (Debian's package) when it is missing: compute jobs run in runc sandboxes, and
# their tests start real ones. Needs root (as CI has) to install; says what to do otherwise.
set -euo pipefail
if command -v runc >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "runc is missing and this is not root: install it with 'sudo apt-get install runc'" >&2
  exit 1
fi
echo "installing runc (Debian) for the compute-job sandbox"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends runc >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends runc >/dev/null
}
runc --version | head -1
