#!/usr/bin/env bash
# Set up, then run the whole check: ruff lint + format check, and the pytest suite, listing its 15
# slowest tests. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow and not browser"`.
# Chromium (scripts/install_browser.sh) is installed only when it is missing and browser tests are selected.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ ! -x /usr/bin/chromium ]; then
  markers=$(mktemp)
  # tests/conftest.py writes the markers of the selected tests to this file
  CLIPITA_SELECTED_MARKERS="$markers" python -m pytest --collect-only -q "$@" >/dev/null 2>&1 || true
  if grep -qx browser "$markers"; then
    bash scripts/install_browser.sh
  fi
  rm -f "$markers"
fi
ruff check .
ruff format --check .
python -m pytest -q --durations=15 "$@"
