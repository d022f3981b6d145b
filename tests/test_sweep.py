"""`biomm sweep`: a tiny grid trained and measured, resumed without retraining, and bad sweep YAML
stopped before anything trains with an error naming the cell."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import biomm.train.run as train_run
from biomm.config import ConfigError
from biomm.eval.sweep import load_sweep_config, plan_cells, run_sweep

PROJECT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=1"]


def _sweep(tmp_path, **grid) -> Path:
    data = {"name": "t", "train_config": str(PROJECT / "configs" / "train" / "clinical_tiny.yaml"), "set": TINY,
            "tasks": ["hypertension_onset_3y"], "n_boot": 20,
            "grid": {"timing": ["middle"], "op": ["default"],
                     "objectives": {"c": {"contrastive": {"weight": 1.0}}}, **grid}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tiny_grid_trains_measures_and_resumes(clinical_cohort, tmp_path, monkeypatch):
    cfg = load_sweep_config(_sweep(tmp_path, timing=["middle", "late"],
                                   objectives={"f": {"contrastive": {"weight": 1.0}, "matching": {"weight": 0.5}}}))
    out = tmp_path / "out"
    calls = []
    real_fit = train_run.fit
    monkeypatch.setattr(train_run, "fit", lambda *a, **k: calls.append(k.get("resume")) or real_fit(*a, **k))
    table = run_sweep(cfg, clinical_cohort, out, log=lambda *_: None)
    assert [c["id"] for c in table["cells"]] == ["middle-default-f", "late-default-f"]
    assert calls == [False] * 2
    for cell in table["cells"]:
        assert cell["parameters"] > 0 and cell["steps_per_s"] > 0
        assert "ehr->text" in cell["retrieval"]["pairs"]
        task = cell["tasks"]["hypertension_onset_3y"]  # cross-validated over every sample, baselines beside
        assert task["samples"] > task["positives"] > 0
        assert {"fused", "bag_of_codes_lr", "count_gbm", "hybrid"} <= set(task["auroc"])
        assert all(0.0 <= v["value"] <= 1.0 for v in task["auroc"].values())
    md = (out / "sweep.md").read_text()
    assert "| middle-default-f |" in md and "BM25" in md
    assert (out / "sweep.png").exists() and json.loads((out / "sweep.json").read_text())["cells"]
    # run again: every finished cell is kept, nothing trains
    calls.clear()
    run_sweep(cfg, clinical_cohort, out, log=lambda *_: None)
    assert calls == []
    # an interrupted cell (checkpoint, no result) resumes from its checkpoint
    cell = out / "cells" / "late-default-f"
    for name in ("result.json", "run/metrics.json"):
        (cell / name).unlink()
    run_sweep(cfg, clinical_cohort, out, log=lambda *_: None)
    assert calls == [True]


@pytest.mark.parametrize("grid, message", [
    ({"timing": ["middle", "sideways"]}, "cell 'sideways-default-c': unknown timing 'sideways'"),
    ({"op": ["default", "blend"]}, "cell 'middle-blend-c': unknown fusion op 'blend'"),
    ({"objectives": {"x": {"contrastive": {"weight": 1.0}, "telepathy": {"weight": 1.0}}}},
     "cell 'middle-default-x': unknown objective(s) ['telepathy']"),
    ({"modalities": [["ehr", "text"], ["ehr", "omics"]]}, "cell 'middle-default-c-ehr+omics': the cohort .* has no omics"),
    ({"objectives": {"none": {"contrastive": {"weight": 0.0}}}}, "cell 'middle-default-none': objective set 'none' gives no"),
])
def test_bad_sweep_yaml_names_the_cell_before_training(clinical_cohort, tmp_path, monkeypatch, grid, message):
    monkeypatch.setattr(train_run, "fit", lambda *a, **k: pytest.fail("trained before the sweep was checked"))
    cfg = load_sweep_config(_sweep(tmp_path, **grid))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]").replace("+", r"\+").replace(r"\.\*", ".*")):
        run_sweep(cfg, clinical_cohort, tmp_path / "out", log=lambda *_: None)


def test_the_design_triangle_grid_plans(clinical_cohort):
    cfg = load_sweep_config(PROJECT / "configs" / "sweeps" / "design_triangle.yaml")
    cells = plan_cells(cfg, clinical_cohort)
    assert len(cells) == 12 and {c["timing"] for c in cells} == {"early", "late", "middle"}
    late = next(c for c in cells if c["id"] == "late-gate-fusion")["config"].model
    assert late.backbone.fusion_op == "gate" and late.objectives.matching.weight == 0.5
    mid = next(c for c in cells if c["id"] == "middle-gate-preset")["config"].model
    assert mid.backbone.stream_op == "gate" and mid.objectives.matching.weight == 0
