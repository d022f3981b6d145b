#!/usr/bin/env bash
# Make a headless Chromium available for the browser test: Debian's `chromium` (apt, as root) and the
# `playwright` Python package that drives it (its own browsers are not downloaded; /usr/bin/chromium is used).
# Prints the browser's path on success; exits non-zero with the reason otherwise.
set -euo pipefail
PY="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "chromium is missing and installing it needs root (apt-get install chromium)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null \
    || { echo "apt-get install chromium failed" >&2; exit 1; }
fi
if ! "$PY" -c "import playwright" 2>/dev/null; then
  "$PY" -m pip install -q playwright || { echo "pip install playwright failed" >&2; exit 1; }
fi
command -v chromium
