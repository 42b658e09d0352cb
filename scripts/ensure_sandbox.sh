#!/usr/bin/env bash
# Installs what compute jobs and their tests need when it is missing (Debian packages): runc,
# which runs every job in its own container, and busybox-static, from which the container tests
# build their OCI image. Needs root (as CI has) to install; says what to do otherwise.
set -euo pipefail
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nc || missing+=(busybox-static)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing ${missing[*]} and this is not root: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian) for the compute-job sandbox"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
runc --version | head -1
