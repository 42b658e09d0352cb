#!/usr/bin/env bash
# Installs what compute jobs and their tests need when it is missing (Debian packages): runc,
# which runs every job in its own container, and busybox-static, from which the container tests
# build their OCI image.
set -euo pipefail
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nc || missing+=(busybox-static)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "the compute-job sandbox" "${missing[@]}"
runc --version | head -1
