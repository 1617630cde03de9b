#!/usr/bin/env bash
# Set up, then run the whole check: ruff lint + format check, and the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q "$@"
