#!/usr/bin/env bash
# Installs Debian's chromium when it is missing: the market's web pages are tested in it
# headless (tests/it/market.rs, a screenshot and the rendered DOM).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "the web page tests" chromium
chromium --version
