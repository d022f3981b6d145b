#!/usr/bin/env bash
# GPU smoke run (not part of `make test`): on a machine with a CUDA GPU, train the small clinical and cell
# presets for a few hundred steps in bf16-mixed; print samples/s, peak GPU memory and the loader's share of
# a step; exit 1 if a loss does not fall. Without a CUDA GPU it says so and exits 0.
#   bash scripts/gpu_smoke.sh [STEPS]          (default 300; PY=python to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  echo "gpu_smoke: no CUDA GPU visible to $PY (torch.cuda.is_available() is false): nothing to run"
  exit 0
fi
exec "$PY" -m biomm.bench.gpu "${1:-300}"
