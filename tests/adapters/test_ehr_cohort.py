"""Training the clinical preset on a cohort without a modality: the absent adapter is dropped, and recorded."""
from __future__ import annotations

import json
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_a_fhir_only_cohort_trains_without_the_imaging_adapter(tmp_path, data_dir, capsys):
    from biomm.ingest.ehr.config import FhirIngestConfig
    from biomm.ingest.ehr.fhir import ingest
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    src = tmp_path / "synthea"
    src.mkdir()
    for f in sorted((data_dir / "synthea").glob("*.json.gz"))[:30]:
        (src / f.name).symlink_to(f)
    cohort = tmp_path / "cohort"
    ingest([src], cohort, FhirIngestConfig(deid={"key": "test-key"}), progress=False)
    cfg = load_train_config(PROJECT / "configs" / "train" / "clinical_tiny.yaml",
                            ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
                             "data.batch_size=4"])
    fit(cfg, cohort, tmp_path / "run", progress=False)
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line and "imaging" in line]
    assert len(warned) == 1 and "without the imaging adapter" in warned[0]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["dropped_modalities"] == ["imaging"]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["data"]["modalities"] == ["ehr", "text"] and set(saved["model"]["adapters"]) == {"ehr", "text"}
