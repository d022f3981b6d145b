"""`biomm eval` for cell models: annotation (linear probe, zero-shot, kNN reference mapping) against
PCA + logistic regression on the same cells, imputation against the per-gene mean, perturbation
against the mean baseline (when a head is fitted), and a UMAP of the embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from biomm.model.bundle import LoadedModel
from biomm.eval import plots
from biomm.query.index import VectorIndex


def knn_transfer(ref: np.ndarray, ref_labels: list[str], query: np.ndarray, k: int = 15) -> list[str]:
    """Reference mapping: each query cell takes the similarity-weighted majority label of its k
    nearest annotated reference cells (faiss index, exact fallback)."""
    index = VectorIndex(ref, [str(i) for i in range(len(ref))])
    scores, rows = index.search(query, k)
    out = []
    for s, r in zip(scores, rows):
        votes: dict[str, float] = {}
        for score, row in zip(s, r):
            if row >= 0:
                votes[ref_labels[row]] = votes.get(ref_labels[row], 0.0) + max(float(score), 0.0) + 1e-6
        out.append(max(votes, key=votes.get))
    return out


def _scores(truth: list[str], pred: list[str]) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(truth, pred)),
            "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)), "n": len(truth)}


def pca_logreg(x_train: np.ndarray, y_train: list[str], x_test: np.ndarray, n_pcs: int = 50) -> list[str]:
    """The standard baseline: PCA of the log-normalised expression, then logistic regression."""
    scaler = StandardScaler(with_mean=True).fit(x_train)
    pca = PCA(n_components=min(n_pcs, x_train.shape[1], x_train.shape[0] - 1), random_state=0)
    z_train = pca.fit_transform(scaler.transform(x_train))
    lr = LogisticRegression(max_iter=2000, C=1.0).fit(z_train, y_train)
    return list(lr.predict(pca.transform(scaler.transform(x_test))))


def _expression(cells) -> np.ndarray:
    """Dense log-normalised HVG expression of a CellSet (small cohorts: the baseline's input)."""
    import anndata as ad

    x = ad.read_h5ad(cells.path, backed="r")[cells.rows].to_memory()
    if "highly_variable" in x.var:
        x = x[:, x.var["highly_variable"].to_numpy()]
    return x.X.toarray() if hasattr(x.X, "toarray") else np.asarray(x.X)


def evaluate_cells(loaded: LoadedModel, cohort: str | Path, out: str | Path) -> dict[str, Any]:
    """Annotation (probe, zero-shot, kNN transfer) against PCA + LR, imputation, perturbation, and a UMAP."""
    from biomm.heads.cells.virtual_cell import VirtualCell

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vc = VirtualCell(loaded, cohort)
    if vc.annotator is None:
        vc.fit_annotator("train")  # the linear probe on biomm embeddings, fitted on the training split
    report: dict[str, Any] = {"kind": "cells", "model": loaded.config.name, "cohort": str(cohort)}
    report.update(vc.evaluate("test", out=out))
    train, test = vc.cells(split="train"), vc.cells(split="test")
    y_train, y_test = vc.true_labels(train), vc.true_labels(test)
    e_train, e_test = vc.embed(train), vc.embed(test)
    report["annotation"]["knn_transfer"] = _scores(y_test, knn_transfer(e_train, y_train, e_test))
    x_train, x_test = _expression(train), _expression(test)
    report["annotation"]["baseline_pca_logreg"] = _scores(y_test, pca_logreg(x_train, y_train, x_test))
    report["plots"] = {"umap": plots.umap_plot(np.concatenate([e_train, e_test]), list(y_train) + list(y_test),
                                               "cell embeddings (train + test)", out / "umap.png").name}
    return report


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def cells_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a cell-model evaluation."""
    lines = [f"# biomm eval: {report['model']} (cells) on {Path(report['cohort']).name}", "",
             f"Test split: {report.get('n_cells')} cells. Probe and baselines are fitted on the training split.", "",
             "## Cell-type annotation", "", "| method | accuracy | macro-F1 |", "|---|---|---|"]
    for name, s in report["annotation"].items():
        if isinstance(s, dict) and "accuracy" in s:
            lines.append(f"| {name} | {_fmt(s['accuracy'])} | {_fmt(s.get('macro_f1', 'n/a'))} |")
    imp = report.get("imputation", {})
    lines += ["", "## Masked expression imputation", "", "```", str(imp), "```", ""]
    if "perturbation" in report:
        lines += ["## Perturbation response (against the mean-perturbation baseline)", "", "```",
                  str(report["perturbation"]), "```", ""]
    for name in report.get("plots", {}).values():
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)
