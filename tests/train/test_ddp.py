"""DDP on 2 CPU processes (gloo): the loss curve matches one process with the same global batch."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch.distributed as dist

from biomm.train.run import fit
from biomm.train.config import load_train_config

from biomm.bench.scale import TRAIN_CONFIG, TRAIN_OVERRIDES

# the scale bench's own training set-up (its preset, objectives and fixed global batch), so the curve checked
# here is the one `biomm bench scale` times at every cohort size; masked modelling draws its masks per
# process, so the bench (and this test) train without it: the contrastive loss is the one DDP must keep exact
COMMON = [o for o in TRAIN_OVERRIDES if not o.startswith("data.batch_size=")] + [
    "trainer.max_steps=4", "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=4", "trainer.log_every_n_steps=1"]
BATCH = int(next(o for o in TRAIN_OVERRIDES if o.startswith("data.batch_size=")).split("=")[1])


def _losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_matches_one_process(clinical_cohort, tmp_path):
    one = load_train_config(TRAIN_CONFIG, COMMON + [f"data.batch_size={BATCH}"])
    fit(one, clinical_cohort, tmp_path / "one", progress=False)
    two = load_train_config(TRAIN_CONFIG, COMMON + [f"data.batch_size={BATCH // 2}", "trainer.devices=2",
                                                   "trainer.strategy=ddp_spawn"])
    fit(two, clinical_cohort, tmp_path / "two", progress=False)
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    for step, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= 2e-3 * max(1.0, abs(x)), f"step {step}: one process {x:.5f}, two processes {y:.5f}"
