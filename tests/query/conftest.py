"""A tiny clinical model trained and exported once for the query tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def query_cohort(clinical_cohort, tmp_path_factory) -> Path:
    """A writable copy of the clinical cohort, with the X-ray labels imported."""
    from biomm.commands.labels import import_xray_labels

    root = tmp_path_factory.mktemp("query")
    cohort = root / "cohort"
    shutil.copytree(clinical_cohort, cohort)
    import_xray_labels(cohort, clinical_cohort.parent / "xrays" / "linkage.csv")
    return cohort


@pytest.fixture(scope="session")
def clinical_model(query_cohort, tmp_path_factory) -> Path:
    from biomm.model.export import export
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    root = tmp_path_factory.mktemp("query_model")
    cfg = load_train_config(PROJECT / "configs" / "train" / "clinical_tiny.yaml",
                            ["trainer.max_steps=8", "trainer.val_every_n_steps=8", "trainer.checkpoint_every_n_steps=8"])
    fit(cfg, query_cohort, root / "run", progress=False)
    return export(root / "run", root / "model")
