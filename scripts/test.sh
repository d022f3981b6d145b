#!/usr/bin/env bash
# Runs the test suite. Services the tests need (Orthanc for the PACS tests) are started by
# their own fixtures through scripts/orthanc.sh, on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q --durations=20 "$@"
