#!/usr/bin/env bash
# Runs the test suite. Services the tests need (Orthanc for the PACS tests) are started by
# their own fixtures through scripts/orthanc.sh, on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Two workers (the tests use one torch thread each, so both cores are busy); a file stays on one worker,
# so its module fixtures (a trained model, a started Orthanc) are built once (measured: 8 min 34 s against
# 10 min 36 s serial; grouping whole folders per worker was slower). BIOMM_TEST_WORKERS=0: serial.
workers=${BIOMM_TEST_WORKERS:-2}
dist=()
if [ "$workers" != "0" ]; then dist=(-n "$workers" --dist loadfile); fi
exec .venv/bin/python -m pytest -q --durations=20 "${dist[@]}" "$@"
