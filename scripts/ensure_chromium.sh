#!/usr/bin/env bash
# Installs Debian's chromium when it is missing: the market's web pages are tested in it
# headless (tests/it/market.rs, a screenshot and the rendered DOM). Needs root (as CI has) to
# install; says what to do otherwise.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing and this is not root: sudo apt-get install chromium" >&2
  exit 1
fi
echo "installing chromium (Debian) for the web page tests"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends chromium >/dev/null
}
chromium --version
