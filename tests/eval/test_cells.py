"""The cell evaluation protocol's parts on real PBMCs: CV annotation with intervals, kNN smoothing,
the linear perturbation baseline, normalisation against the mean baseline, cell-eval on real controls."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from biomm.eval.cells import annotation_cv, bootstrap_accuracy
from biomm.heads.cells.imputation import hidden_entries, knn_smoothing, mse_interval
from biomm.heads.cells.perturbation import LinearBaseline, _cell_eval, normalised


def _pbmc():
    a = sc.datasets.pbmc68k_reduced()
    return a.raw.X.toarray().astype(np.float32), list(a.obs["bulk_labels"].astype(str))


def test_annotation_cv_same_folds_and_paired_interval():
    x, y = _pbmc()
    x, y = x[:300], y[:300]
    pcs = x @ np.random.default_rng(0).normal(size=(x.shape[1], 32)).astype(np.float32)  # an "embedding"
    preds = annotation_cv(pcs, x, y, folds=5, seed=0)
    assert set(preds) == {"probe", "probe_plus_pcs", "pca_logreg"} and all(len(p) == 300 for p in preds.values())
    truth = np.asarray(y, dtype=object)
    s = bootstrap_accuracy(truth, preds["probe"], preds["pca_logreg"])
    assert s["accuracy_ci95"][0] <= s["accuracy"] <= s["accuracy_ci95"][1]
    assert s["minus_pca_logreg_ci95"][0] <= s["minus_pca_logreg"] <= s["minus_pca_logreg_ci95"][1]
    assert (preds["pca_logreg"] == truth).mean() > 0.6  # the real baseline is strong on PBMCs
    same = bootstrap_accuracy(truth, preds["pca_logreg"], preds["pca_logreg"])
    assert same["minus_pca_logreg"] == 0 and same["minus_pca_logreg_ci95"] == [0.0, 0.0]


def test_knn_smoothing_beats_gene_mean_on_hidden_values():
    x, _ = _pbmc()
    ref, query = x[:500], x[500:600]
    hide = hidden_entries(len(query), x.shape[1], 0.25, seed=0)
    assert hide.any(1).all() and 0.2 < hide.mean() < 0.3
    knn = knn_smoothing(ref, query, hide, k=15)
    mean = np.broadcast_to(ref.mean(0), query.shape)
    sq_knn, sq_mean = ((knn - query)[hide] ** 2), ((mean - query)[hide] ** 2)
    assert sq_knn.mean() < sq_mean.mean()
    cell_of = np.nonzero(hide)[0]
    lo, hi = mse_interval(sq_knn, cell_of, minus=sq_mean)  # paired over the same cells: all of it below zero
    assert lo <= sq_knn.mean() - sq_mean.mean() <= hi < 0
    assert mse_interval(sq_knn, cell_of, minus=sq_knn) == [0.0, 0.0]
    lo, hi = mse_interval(sq_knn, cell_of)
    assert lo <= sq_knn.mean() <= hi


def test_linear_baseline_recovers_a_low_rank_response():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(40)]
    g = rng.normal(size=(40, 3))
    w = rng.normal(size=(3, 3))
    def truth(label):  # a linear response in the genes' own embedding
        return g @ w @ sum(g[int(s[1:])] for s in label.split("+"))
    trained = [f"G{i}" for i in range(30)]
    lb = LinearBaseline(np.stack([truth(t) for t in trained]), trained, genes, k=3, ridge=1e-6)
    new = "G33"
    assert np.corrcoef(lb.predict(new), truth(new))[0, 1] > 0.95
    assert normalised("mae", 0.5, 1.0) == pytest.approx(0.5) and normalised("pearson_delta", 0.6, 0.2) == pytest.approx(0.5)
    assert normalised("pearson_delta", 0.2, 0.2) == 0.0


def test_cell_eval_uses_the_real_controls(tmp_path):
    x, _ = _pbmc()
    x = x[:, :200]
    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 200 + ["A"] * 150 + ["B"] * 150)
    real_x = x[rng.integers(0, 700, 500)].copy()
    real_x[labels == "A", :10] *= 0.1
    real_x[labels == "B", 10:20] += 1.0
    var = pd.DataFrame(index=[f"g{i}" for i in range(200)])
    real = ad.AnnData(real_x, obs=pd.DataFrame({"perturbation": labels}, index=[f"r{i}" for i in range(500)]), var=var)
    perfect = real.copy()
    perfect.obs_names = [f"p{i}" for i in range(500)]
    res = _cell_eval(real, perfect, tmp_path / "ce")
    assert set(res) == {"A", "B"}
    assert res["A"]["pearson_delta"] > 0.99 and res["A"]["discrimination_score_l1"] == 1.0 and res["A"]["mae"] < 1e-6
