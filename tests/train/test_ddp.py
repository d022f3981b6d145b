"""DDP on 2 CPU processes (gloo): the loss curve matches one process with the same global batch."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch.distributed as dist

from biomm.train.run import fit
from biomm.train.config import load_train_config

CLINICAL = Path(__file__).resolve().parents[2] / "configs" / "train" / "clinical_tiny.yaml"
COMMON = ["trainer.max_steps=6", "trainer.val_every_n_steps=6", "trainer.checkpoint_every_n_steps=6",
          "trainer.log_every_n_steps=1", "trainer.precision=fp32", "trainer.accelerator=cpu",
          # masked modelling draws its masks per process; the contrastive loss is the one DDP must keep exact
          "model.objectives.masked.weight=0.0", "data.modalities=[ehr,text]"]


def _losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_matches_one_process(clinical_cohort, tmp_path):
    one = load_train_config(CLINICAL, COMMON + ["data.batch_size=8"])
    fit(one, clinical_cohort, tmp_path / "one", progress=False)
    two = load_train_config(CLINICAL, COMMON + ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp_spawn"])
    fit(two, clinical_cohort, tmp_path / "two", progress=False)
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    for step, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= 2e-3 * max(1.0, abs(x)), f"step {step}: one process {x:.5f}, two processes {y:.5f}"
