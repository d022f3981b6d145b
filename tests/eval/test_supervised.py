"""The image path on real PneumoniaMNIST X-rays through DICOM ingest: labels, official splits,
supervised fine-tuning, and an eval that sets the result beside the published MedMNIST row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biomm.config import ConfigError
from biomm.eval.run import run_eval
from biomm.model.export import export
from biomm.ingest.imaging.dicom import ingest as ingest_dicom
from biomm.ingest.demo.medmnist import apply_labels_and_splits, write_pneumoniamnist_dicoms
from biomm.store.cohort import Cohort
from biomm.train.run import fit
from biomm.train.config import load_train_config

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def xray_cohort(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("pneumonia")
    info = write_pneumoniamnist_dicoms(data_dir / "pneumoniamnist.npz", root / "src", per_split=60)
    ingest_dicom([root / "src" / "dicom"], root / "cohort", {"preprocess": {"spatial_size_2d": [32, 32]}})
    counts = apply_labels_and_splits(root / "cohort", info["labels"])
    assert counts == {"train": 60, "val": 60, "test": 60}
    return root / "cohort"


def test_labels_and_the_data_sets_own_split(xray_cohort, data_dir):
    with np.load(data_dir / "pneumoniamnist.npz") as z:
        expected = int(z["test_labels"].reshape(-1)[:60].sum())
    with Cohort(xray_cohort, create=False, read_only=True) as c:
        test = set(c.split_subjects("test"))
        labels = {sid: float(v) for sid, v, _ in c.labels("pneumonia")}
    assert len(test) == 60 and sum(labels[s] for s in test) == expected


def test_supervised_image_path_trains_and_is_reported_beside_medmnist(xray_cohort, tmp_path):
    cfg = load_train_config(PROJECT / "configs" / "train" / "pneumonia_image.yaml",
                            ["trainer.max_steps=12", "trainer.val_every_n_steps=12", "trainer.checkpoint_every_n_steps=12",
                             "model.adapters.imaging.network=vit", "model.adapters.imaging.patch_size=8", "model.preset=tiny"])
    fit(cfg, xray_cohort, tmp_path / "run", progress=False)
    model = export(tmp_path / "run", tmp_path / "model")
    report, path = run_eval(model, xray_cohort, tmp_path / "eval", [], [])
    assert report["kind"] == "supervised" and report["test"]["n"] == 60
    assert report["reference"]["accuracy"] == 0.854 and "not the same test set" in report["note"]
    assert 0 <= report["test"]["accuracy"] <= 1
    assert "MedMNIST v2 ResNet-18" in path.read_text()


def test_a_missing_label_fails_before_training(xray_cohort, tmp_path):
    cfg = load_train_config(PROJECT / "configs" / "train" / "pneumonia_image.yaml", ["data.label_name=fracture"])
    with pytest.raises(ConfigError, match="has no label 'fracture'"):
        fit(cfg, xray_cohort, tmp_path / "run", progress=False)
