"""Training on real cohorts: the tiny clinical and cell presets, bad configs, resume, export round trip."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import biomm
from biomm.config import ConfigError
from biomm.train.plan import NanLossError
from biomm.train.run import fit
from biomm.train.config import load_train_config

PROJECT = Path(__file__).resolve().parents[2]
CLINICAL = PROJECT / "configs" / "train" / "clinical_tiny.yaml"
CELL = PROJECT / "configs" / "train" / "cell_tiny.yaml"
FAST = ["trainer.max_steps=6", "trainer.val_every_n_steps=3", "trainer.checkpoint_every_n_steps=3"]


def test_tiny_clinical_run_trains_and_validates(clinical_cohort, tmp_path):
    cfg = load_train_config(CLINICAL, FAST)
    metrics = fit(cfg, clinical_cohort, tmp_path / "run", progress=False)
    assert metrics["steps"] == 6
    assert np.isfinite(metrics["val/loss"])
    # every pair of present modalities is evaluated on the validation split
    assert {"val/recall@1/ehr-text", "val/recall@1/ehr-imaging"} <= set(metrics)
    assert 0 <= metrics["val/recall@5/ehr-text"] <= 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["precision"] in {"bf16-mixed", "32-true"} and run["precision_reason"]
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    resolved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert resolved["model"]["adapters"]["ehr"]["vocab_size"] > 100  # sized by the cohort's vocabulary


def test_tiny_cell_run_on_pbmc(cell_cohort, tmp_path):
    cfg = load_train_config(CELL, FAST)
    metrics = fit(cfg, cell_cohort, tmp_path / "run", progress=False)
    assert metrics["steps"] == 6 and np.isfinite(metrics["val/loss"])
    assert metrics["val/pairs/omics-text"] > 20
    labels = json.loads((tmp_path / "run" / "artifacts" / "cell_labels.json").read_text())
    assert len(labels["categories"]) == 10


def test_unknown_key_and_missing_modality_fail_before_training(clinical_cohort, cell_cohort, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer.max_stepz'"):
        load_train_config(CLINICAL, ["trainer.max_stepz=3"])
    cfg = load_train_config(CELL, FAST)
    with pytest.raises(ConfigError, match=r"has no omics data; it has: ehr \(\d+ subjects\), imaging"):
        fit(cfg, clinical_cohort, tmp_path / "r1", progress=False)
    assert not (tmp_path / "r1").exists()


def test_empty_split_fails_before_training(tmp_path, clinical_cohort):
    from biomm.ingest.ehr.fhir import ingest as ingest_fhir

    one = sorted((PROJECT / "biomm" / "resources" / "data" / "synthea").glob("*.json.gz"))[:1]
    ingest_fhir(one, tmp_path / "tiny")
    cfg = load_train_config(CLINICAL, FAST + ["data.modalities=[ehr]"])
    with pytest.raises(ConfigError, match=r"split .* has [01] subject"):
        fit(cfg, tmp_path / "tiny", tmp_path / "r", progress=False)


def test_nan_loss_stops_with_step_subjects_and_checkpoint(clinical_cohort, tmp_path):
    cfg = load_train_config(CLINICAL, FAST + ["trainer.max_steps=8", "optim.lr=1.0e+30", "optim.warmup_steps=0",
                                               "trainer.gradient_clip_val=null", "trainer.precision=fp32"])
    with pytest.raises(NanLossError, match=r"non-finite loss .* at step \d+; batch subjects: P[0-9a-f]{16}.*last good checkpoint"):
        fit(cfg, clinical_cohort, tmp_path / "run", progress=False)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


SLOW_VICTIM = """
import sys, time
from lightning.pytorch.callbacks import Callback
from biomm.train.config import load_train_config
from biomm.train.run import fit

class Slow(Callback):
    def on_train_batch_start(self, *args):
        time.sleep(0.3)

fit(load_train_config(sys.argv[1], sys.argv[4:]), sys.argv[2], sys.argv[3], progress=False, extra_callbacks=[Slow()])
"""


def test_kill_and_resume_gives_the_same_weights(clinical_cohort, tmp_path):
    args = ["trainer.max_steps=12", "trainer.checkpoint_every_n_steps=4", "trainer.val_every_n_steps=12",
            "trainer.precision=fp32"]
    cmd = [sys.executable, "-m", "biomm", "train", str(CLINICAL), "--cohort", str(clinical_cohort), "--json"]
    sets = [x for a in args for x in ("--set", a)]
    # One thread: multi-threaded CPU reductions add run-to-run noise (~1e-3 after a few steps, the
    # "bf16 tolerance" of the contract); single-threaded, resume must be exact.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"  # trains beside the victim (one thread each, two cores)
    reference = subprocess.Popen([*cmd, "--out", str(straight), *sets], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=env)
    killed = tmp_path / "killed"
    # slow the victim down (a callback injected into fit) so that it is still training when the step-4
    # checkpoint lands (resuming there crosses a Lightning epoch boundary, where a loader that restarts
    # from its first step would go wrong)
    victim = [sys.executable, "-c", SLOW_VICTIM, str(CLINICAL), str(clinical_cohort), str(killed), *args]
    proc = subprocess.Popen(victim, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    ckpt = killed / "checkpoints"
    while time.time() < deadline and not ((ckpt / "step000004.ckpt").exists() and (ckpt / "last.ckpt").exists()):
        time.sleep(0.05)
    time.sleep(0.1)  # last.ckpt is complete; the victim is inside step 5 (0.3 s per step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "last.ckpt").exists()
    assert not (killed / "model").exists(), "the victim finished before it was killed"
    resumed = subprocess.run([*cmd, "--resume", str(killed), *sets], check=True, capture_output=True, timeout=300, env=env)
    said = resumed.stdout.decode() + resumed.stderr.decode()
    assert "GPU available" not in said and "Tip" not in said  # Lightning's start-up notes are behind --verbose
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()[-2000:]
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} differs after resume")


def test_export_then_load_gives_identical_embeddings(clinical_cohort, tmp_path):
    cfg = load_train_config(CLINICAL, FAST)
    fit(cfg, clinical_cohort, tmp_path / "run", progress=False)
    from biomm.model.export import export

    folder = export(tmp_path / "run", tmp_path / "model")
    card = (folder / "README.md").read_text()
    assert "## Intended use" in card and "ehr, imaging, text" in card and "recall@1" in card
    m1 = biomm.load(folder)
    e1 = m1.embed(clinical_cohort)
    # the exported folder is self-contained: move it and load again
    moved = tmp_path / "moved"
    folder.rename(moved)
    e2 = biomm.load(moved).embed(clinical_cohort)
    from biomm.store.cohort import Cohort

    with Cohort(clinical_cohort, create=False, read_only=True) as c:
        n_subjects = len(c.subjects())
        n_imaging = len({r["subject_id"] for r in c.records("imaging")})
    assert e1.subject_ids == e2.subject_ids and len(e1.subject_ids) == n_subjects
    np.testing.assert_array_equal(e1.fused, e2.fused)
    assert e1.present["imaging"].sum() == n_imaging > 20 and e1.present["ehr"].all()
