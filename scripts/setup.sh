#!/usr/bin/env bash
# Set up lwd on a fresh machine: a virtual environment in .venv with torch (CPU) installed first,
# then the package with its pinned dependencies, plus the OSMesa library MuJoCo renders with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# A fresh install takes about 2.2 GB (.venv) plus pip's unpacking room; stop early with a clear
# message rather than fail half-way through pip with "No space left on device".
need_mb=${LWD_SETUP_NEED_MB:-3000}
if ! .venv/bin/python -c "import torch, lwd" 2>/dev/null; then
  for dir in . "${TMPDIR:-/tmp}"; do
    free_mb=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
    if [ -n "$free_mb" ] && [ "$free_mb" -lt "$need_mb" ]; then
      echo "lwd setup: only ${free_mb} MB free on the disk holding $(cd "$dir" && pwd);" \
        "installing needs about ${need_mb} MB. Free some space (old clones, caches) and" \
        "run this again; nothing has been changed." >&2
      exit 1
    fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, from the local CPU wheel index; otherwise a dependency pulls a multi-GB CUDA build.
python -m pip install -q -c constraints.txt torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[dev]"
# Offscreen rendering for camera observations (optional: state-only use works without it).
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq libosmesa6 >/dev/null) \
      || echo "note: could not install libosmesa6; image tests will be skipped" >&2
  else
    echo "note: libOSMesa not found; install libosmesa6 for camera observations" >&2
  fi
fi
