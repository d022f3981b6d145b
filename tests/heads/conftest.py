"""A tiny cell model trained on the real PBMC cohort, exported once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CELL_OVERRIDES = ["trainer.max_steps=80", "trainer.val_every_n_steps=80", "trainer.checkpoint_every_n_steps=80",
                  "model.objectives.masked.weight=1.0", "data.omics.tokens.value_mode=continuous"]


@pytest.fixture(scope="session")
def cell_model_dir(cell_cohort, project_root, tmp_path_factory) -> Path:
    """Exported cell-tiny model (omics + label prompts, masked expression modelling). Read-only: copy it."""
    from biomm.model.export import export
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    root = tmp_path_factory.mktemp("cell_model")
    cfg = load_train_config(project_root / "configs" / "train" / "cell_tiny.yaml", CELL_OVERRIDES)
    fit(cfg, cell_cohort, root / "run", progress=False)
    return export(root / "run", root / "model")


@pytest.fixture
def cell_model(cell_model_dir, tmp_path) -> Path:
    """A private copy of the exported model: tests may write heads into it."""
    return Path(shutil.copytree(cell_model_dir, tmp_path / "model"))
