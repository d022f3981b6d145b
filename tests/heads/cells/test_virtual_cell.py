"""Virtual-cell head on the real PBMC cohort: annotation, imputation, perturbation, queries."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from biomm.heads.cells.cellset import cohort_cells_file, embed_cells
from biomm.heads.cells.virtual_cell import VirtualCell
from biomm.schema import QueryError, QueryRequest

from biomm.ingest.demo.perturbations import simulate_knockdowns


def test_annotation_embeds_omics_alone(cell_model, cell_cohort):
    """The cell embedding used to annotate is the omics one: the label-prompt text never leaks in."""
    vc = VirtualCell.open(cell_model, cell_cohort)
    cells = vc.cells()
    got = embed_cells(vc.loaded, cells)
    ref = vc.loaded.embed(cell_cohort)  # the batch carries the label text; pooled omics must not see it
    rows = [cells.ids.index(s) for s in ref.subject_ids]
    np.testing.assert_allclose(got[rows], ref.modalities["omics"], atol=1e-5)


def test_probe_fit_evaluate_and_reload(cell_model, cell_cohort, tmp_path):
    vc = VirtualCell.open(cell_model, cell_cohort)
    vc.fit_annotator()
    assert (cell_model / "heads/virtual_cell/annotator.safetensors").exists()
    report = vc.evaluate("test", out=tmp_path / "report")
    probe, zero = report["annotation"]["probe"], report["annotation"]["zero-shot"]
    assert probe["n"] == zero["n"] == report["n_cells"] > 50
    assert probe["accuracy"] > probe["majority_baseline_accuracy"]
    assert zero["accuracy"] > 1.5 / 10  # ten cell types: above chance without any labelled cell
    imp = report["imputation"]
    assert imp["n_hidden"] > imp["n_cells"] and np.isfinite(imp["mse"]) and imp["baseline_pearson"] > 0.5
    assert imp["hidden_fraction"] == 0.25  # the protocol's fraction, as in `biomm eval`, not the training ratio
    assert json.loads((tmp_path / "report/virtual_cell_report.json").read_text())["split"] == "test"
    assert (tmp_path / "report/confusion_probe.png").stat().st_size > 10_000

    again = VirtualCell.open(cell_model, cell_cohort)  # the saved probe answers identically
    cells = again.cells(split="test")
    a, b = vc.annotate(cells), again.annotate(cells)
    assert a.method == b.method == "probe"
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


def test_annotate_query_on_cohort_and_external_file(cell_model, cell_cohort, tmp_path):
    vc = VirtualCell.open(cell_model, cell_cohort)
    res = vc.answer(QueryRequest(kind="annotate", max_cells=60))
    assert res.details["method"] == "zero-shot" and res.warnings
    vc.fit_annotator()
    res = vc.answer(QueryRequest(kind="annotate", max_cells=60))
    cats = json.loads((cell_model / "artifacts/cell_labels.json").read_text())["categories"]
    assert res.details["n_cells"] == 60 == sum(res.details["counts"].values())
    assert res.value == max(res.details["counts"], key=res.details["counts"].get) and res.value in cats
    assert all(c["label"] in cats and 0 < c["score"] <= 1 for c in res.details["cells"])
    assert 0 <= res.details["agreement_with_file_labels"] <= 1

    # the same cells in a file that names genes only by symbol (no vocab_id) annotate the same way
    src = ad.read_h5ad(cohort_cells_file(cell_cohort))[:60]
    ext = ad.AnnData(src.X, obs=src.obs[["bulk_labels"]].copy(), var=src.var[[]].copy())
    ext.obs_names = src.obs["biomm_subject_id"].astype(str).to_numpy()
    ext.write_h5ad(tmp_path / "ext.h5ad")
    res2 = vc.answer(QueryRequest(kind="annotate", cells=str(tmp_path / "ext.h5ad")))
    assert [c["label"] for c in res2.details["cells"]] == [c["label"] for c in res.details["cells"]]


def test_imputation_predicts_hidden_values_from_context(cell_model, cell_cohort):
    vc = VirtualCell.open(cell_model, cell_cohort)
    cells = vc.cells(split="test", max_cells=40)
    genes = ["CD3E", "LYZ", "MS4A1", "NKG7"]
    pred, obs = vc.impute(cells, genes)
    assert pred.shape == obs.shape == (40, 4) and np.isfinite(pred).all()
    x = ad.read_h5ad(cells.path)[cells.rows][:, genes].X.toarray()
    np.testing.assert_allclose(obs, x, rtol=1e-5)  # observed: the file's values, zeros included
    assert pred.std(0).min() > 0  # the prediction depends on the cell, not only on the gene
    # LYZ (monocytes) is predicted higher where it is observed high: the rest of the cell carries it
    hi = obs[:, 1] > np.median(obs[:, 1])
    assert pred[hi, 1].mean() > pred[~hi, 1].mean()
    with pytest.raises(QueryError, match="NOTAGENE"):
        vc.impute(cells, ["NOTAGENE"])


def test_perturbation_scored_by_cell_eval_against_baselines(cell_model, cell_cohort, tmp_path):
    path, targets = simulate_knockdowns(cohort_cells_file(cell_cohort), tmp_path / "perturb.h5ad", n_targets=6,
                                        n_doubles=6, copies=2)
    assert "SIMULATED" in ad.read_h5ad(path, backed="r").uns["simulated"]
    vc = VirtualCell.open(cell_model, cell_cohort)
    with pytest.raises(QueryError, match="no perturbation head"):
        vc.answer(QueryRequest(kind="perturb", gene=targets[0]))
    pm = vc.fit_perturbation(path, vc.cfg.perturbation.model_copy(update={"group_key": "bulk_labels", "steps": 200}),
                             holdout=targets[:1])
    assert targets[0] not in pm.trained and set(targets[1:]) <= set(pm.trained)
    held = pm.metrics["held_out"]
    assert {"seen", "held_out_seen_genes", "unseen_genes"} <= set(held)
    seen = held["seen"]
    assert {"model", "control_mean", "mean_perturbation", "linear"} <= set(seen)
    for metric in ("pearson_delta", "mae", "discrimination_score_l1", "overlap_at_N"):
        assert np.isfinite(seen["model"][metric]) and len(seen["model"][f"{metric}_ci95"]) == 2
        assert seen["mean_perturbation"][f"{metric}_normalised"] == 0.0
    assert seen["model"]["pearson_delta"] > seen["mean_perturbation"]["pearson_delta"]
    assert "additive" in held["held_out_seen_genes"]  # doubles of trained singles
    cats = {p: v["category"] for p, v in held["perturbations"].items()}
    assert all(cats[p] == "unseen_genes" for p in cats if targets[0] in p.split("+"))

    again = VirtualCell.open(cell_model, cell_cohort)  # reloaded from heads/virtual_cell
    res = again.answer(QueryRequest(kind="perturb", gene=targets[2], max_cells=100))
    assert res.details["seen_in_training"] and not res.warnings
    assert res.details["mean_baseline"]["distance_from_prediction"] > 0 and res.value > 0
    unseen = again.answer(QueryRequest(kind="perturb", gene=targets[0], max_cells=20))
    assert unseen.warnings and not unseen.details["seen_in_training"]


def test_bad_input_is_named(cell_model, cell_cohort, tmp_path):
    vc = VirtualCell.open(cell_model, cell_cohort)
    with pytest.raises(QueryError, match="not found"):
        vc.cells(tmp_path / "missing.h5ad")
    with pytest.raises(QueryError, match="'similar'"):
        vc.answer(QueryRequest(kind="similar", subject="x"))
    scaled = ad.read_h5ad(cohort_cells_file(cell_cohort))[:20]
    scaled.X = scaled.X.toarray() - 1.0
    scaled.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(QueryError, match="negative values"):
        vc.answer(QueryRequest(kind="annotate", cells=str(tmp_path / "scaled.h5ad")))
    path, _ = simulate_knockdowns(cohort_cells_file(cell_cohort), tmp_path / "p.h5ad")
    with pytest.raises(QueryError, match="perturbation_key"):
        vc.fit_perturbation(path, vc.cfg.perturbation.model_copy(update={"perturbation_key": "guide"}))
    with pytest.raises(QueryError, match="not in"):
        vc.fit_perturbation(path, holdout=["NOTAGENE"])
