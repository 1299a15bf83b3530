#!/usr/bin/env bash
# Install everything needed, then run the main job: `lwd demo` (arguments are passed through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
lwd demo "$@"
