"""Cell models through the product surface: `biomm eval` (with baselines), `biomm embed` (AnnData
write-back), and the query engine's annotate / similar queries."""
from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
from typer.testing import CliRunner

from biomm.cli import app
from biomm.query.engine import QueryEngine
from biomm.schema import QueryRequest

runner = CliRunner()


def test_eval_reports_probe_zero_shot_knn_and_pca_baseline(cell_model, cell_cohort, tmp_path):
    res = runner.invoke(app, ["eval", str(cell_model), "--cohort", str(cell_cohort), "--out", str(tmp_path / "ev"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    ann = report["annotation"]
    for method in ("probe", "probe_plus_pcs", "pca_logreg", "knn_transfer", "zero_shot", "majority_class"):
        assert 0 <= ann[method]["accuracy_ci95"][0] <= ann[method]["accuracy"] <= ann[method]["accuracy_ci95"][1] <= 1
    # on real PBMCs the classical baseline is strong: it must beat the majority class by a margin
    assert ann["pca_logreg"]["accuracy"] > ann["majority_class"]["accuracy"] + 0.1
    assert "minus_pca_logreg_ci95" in ann["probe"] and ann["probe"]["n"] == report["n_cells"]
    imp = report["imputation"]["methods"]
    assert {"model", "per_gene_mean", "knn_smoothing"} <= set(imp) and imp["model"]["mse"] < imp["per_gene_mean"]["mse"]
    assert report["imputation"]["hidden_fraction"] == 0.25  # fixed by the protocol, not the model's training ratio
    lo, hi = imp["model"]["mse_minus_knn_ci95"]
    assert lo <= imp["model"]["mse_minus_knn"] <= hi and "mse_minus_knn" not in imp["knn_smoothing"]
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "| pca_logreg |" in md and "knn_smoothing" in md and "kNN smoothing (paired" in md
    assert (tmp_path / "ev" / "annotation.png").exists() and (tmp_path / "ev" / "imputation.png").exists()
    assert (tmp_path / "ev" / "tsne.png").exists() and (tmp_path / "ev" / "report.md").exists()


def test_embed_writes_obsm_and_engine_answers(cell_model, cell_cohort, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(cell_cohort, cohort)
    res = runner.invoke(app, ["embed", str(cell_model), "--cohort", str(cohort), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    a = ad.read_h5ad(info["anndata"])
    assert a.obsm["X_biomm"].shape[0] == a.n_obs and np.isfinite(a.obsm["X_biomm"]).all()
    assert "X" in a.__dict__ or a.n_vars > 0  # the expression matrix survived the rewrite
    engine = QueryEngine(cell_model, cohort)
    cell = engine.subjects[0]
    sim = engine.query(QueryRequest(kind="similar", subject=cell, k=5))
    assert len(sim.evidence.similar_subjects) == 5 and all(n.label for n in sim.evidence.similar_subjects)
    ann = engine.query(QueryRequest(kind="annotate", max_cells=50))
    assert ann.details["n_cells"] == 50 and sum(ann.details["counts"].values()) == 50
    labels = [n.label for n in sim.evidence.similar_subjects]
    assert len(set(labels)) >= 1 and np.isfinite(sim.evidence.similar_subjects[0].score)
