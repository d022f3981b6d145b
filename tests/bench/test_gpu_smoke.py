"""scripts/gpu_smoke.sh: without a CUDA GPU it says so and exits 0; its measuring code runs on the CPU path."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_smoke.sh"
TINY = Path(__file__).resolve().parents[2] / "configs" / "train" / "clinical_tiny.yaml"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would train")
def test_without_a_gpu_the_script_says_so_and_exits_0():
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no CUDA GPU" in out.stdout


def test_measurement_path_on_cpu(clinical_cohort, tmp_path):
    from biomm.bench.gpu import train_preset

    r = train_preset("clinical", clinical_cohort, tmp_path / "run", steps=12, config=TINY, accelerator="cpu")
    assert r["steps"] == 12 and r["samples_per_s"] > 0 and r["gpu_peak_memory_gib"] is None
    assert 0 <= r["loader_fraction"] <= 1 and isinstance(r["loss_falls"], bool)
