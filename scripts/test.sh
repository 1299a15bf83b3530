#!/usr/bin/env bash
# Install everything needed, then run the default test suite (fast tests; `-m slow` for the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
