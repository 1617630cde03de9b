#!/usr/bin/env bash
# Installs what tests/test_space_browser.py needs on a fresh Debian machine: Debian's Chromium, which
# Playwright drives through executable_path (no Playwright browser download, so it works offline
# behind an apt mirror). The python playwright package itself is a dev dependency (pyproject.toml).
# scripts/test.sh runs this only when Chromium is missing and browser tests are selected.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core

"$CHROMIUM" --version
