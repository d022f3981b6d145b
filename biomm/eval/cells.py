"""`biomm eval` for cell models: the protocol, each head against its baselines with 95% intervals.

- Annotation, on the cells the model never trained on (the val + test splits): cell-level stratified
  k-fold cross-validation of the linear probe on the embeddings (and of the probe on the embeddings
  concatenated with the fold's expression PCs) against PCA + logistic regression on the same folds;
  kNN reference mapping from the annotated training cells; zero-shot from the label prompts; the
  majority class. Intervals: bootstrap over cells (pooled out-of-fold predictions), and a paired
  bootstrap of each method's difference to PCA + LR.
- Imputation: hidden HVG values (a fixed 25% of each cell's, whatever the model's pre-training ratio,
  so models compare on the same task) of the test-split cells, model (blend weights fitted on the val split)
  against the per-gene mean and kNN smoothing (mean of the 15 nearest training cells in PCA space).
- Perturbation (when a head is fitted): cell-eval metrics against the real control cells for the
  head and every baseline (biomm.heads.cells.perturbation.evaluate_perturbation).
A plot per head, and a t-SNE map of the embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from biomm.eval import plots
from biomm.model.bundle import LoadedModel
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


def probe_logreg(e_train: np.ndarray, y_train: list[str], e_test: np.ndarray, c: float = 1.0) -> list[str]:
    """The linear probe: standardised embeddings, then logistic regression."""
    scaler = StandardScaler().fit(e_train)
    lr = LogisticRegression(max_iter=2000, C=c).fit(scaler.transform(e_train), y_train)
    return list(lr.predict(scaler.transform(e_test)))


def probe_with_pcs(e_train, x_train, y_train, e_test, x_test, n_pcs: int = 50) -> list[str]:
    """The probe on [embedding, expression PCs of the fold's training cells] (both standardised)."""
    scaler = StandardScaler().fit(x_train)
    pca = PCA(n_components=min(n_pcs, x_train.shape[1], x_train.shape[0] - 1), random_state=0).fit(scaler.transform(x_train))
    f = lambda e, x: np.concatenate([e, pca.transform(scaler.transform(x))], 1)
    return probe_logreg(f(e_train, x_train), y_train, f(e_test, x_test))


def _expression(cells) -> np.ndarray:
    """Dense log-normalised HVG expression of a CellSet (small cohorts: the baseline's input)."""
    import anndata as ad

    x = ad.read_h5ad(cells.path, backed="r")[cells.rows].to_memory()
    if "highly_variable" in x.var:
        x = x[:, x.var["highly_variable"].to_numpy()]
    return x.X.toarray() if hasattr(x.X, "toarray") else np.asarray(x.X)


def bootstrap_accuracy(truth: np.ndarray, pred: np.ndarray, ref: np.ndarray | None = None, n_boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """Accuracy with a bootstrap 95% interval over cells; with `ref` (another method's predictions on
    the same cells) also the paired difference accuracy(pred) - accuracy(ref) and its interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(truth), (n_boot, len(truth)))
    hit = (pred == truth).astype(np.float64)
    out: dict[str, Any] = {"accuracy": float(hit.mean()),
                           "accuracy_ci95": [float(np.quantile(hit[idx].mean(1), q)) for q in (0.025, 0.975)]}
    if ref is not None:
        d = hit - (ref == truth)
        out["minus_pca_logreg"] = float(d.mean())
        out["minus_pca_logreg_ci95"] = [float(np.quantile(d[idx].mean(1), q)) for q in (0.025, 0.975)]
    return out


def annotation_cv(e: np.ndarray, x: np.ndarray, y: list[str], folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-fold predictions of the probe, the probe with expression PCs, and PCA + LR, on the same
    stratified folds of the cells (e: embeddings [N, D], x: expression [N, G])."""
    y_arr = np.asarray(y)
    _, counts = np.unique(y_arr, return_counts=True)
    k = int(max(2, min(folds, counts.max())))
    preds = {m: np.empty(len(y_arr), dtype=object) for m in ("probe", "probe_plus_pcs", "pca_logreg")}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rare classes: fewer members than folds
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(e, y_arr):
            ytr = list(y_arr[tr])
            preds["probe"][te] = probe_logreg(e[tr], ytr, e[te])
            preds["probe_plus_pcs"][te] = probe_with_pcs(e[tr], x[tr], ytr, e[te], x[te])
            preds["pca_logreg"][te] = pca_logreg(x[tr], ytr, x[te])
    return preds


def evaluate_cells(loaded: LoadedModel, cohort: str | Path, out: str | Path, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """The cell protocol (module doc): annotation CV, imputation, perturbation, plots; returns the report."""
    from biomm.heads.cells.cellset import cohort_splits
    from biomm.heads.cells.imputation import HIDDEN_FRACTION, evaluate_imputation
    from biomm.heads.cells.virtual_cell import VirtualCell
    from biomm.schema import QueryError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vc = VirtualCell(loaded, cohort)
    report: dict[str, Any] = {"kind": "cells", "model": loaded.config.name, "cohort": str(cohort)}
    of = cohort_splits(cohort)
    every = vc.cells()
    train = every.subset(np.array([i for i, s in enumerate(every.ids) if of.get(s) == "train"], dtype=np.int64))
    held = every.subset(np.array([i for i, s in enumerate(every.ids) if of.get(s) in ("val", "test")], dtype=np.int64))
    y_train, y_held = vc.true_labels(train), vc.true_labels(held)
    e_train, e_held = vc.embed(train), vc.embed(held)
    x_held = _expression(held)
    truth = np.asarray(y_held, dtype=object)
    preds = annotation_cv(e_held, x_held, y_held, folds, seed)
    preds["knn_transfer"] = np.asarray(knn_transfer(e_train, y_train, e_held), dtype=object)
    p, classes = vc.zero_shot(e_held)
    preds["zero_shot"] = np.asarray([classes[i] for i in p.argmax(1)], dtype=object)
    values, counts = np.unique(np.asarray(y_train), return_counts=True)
    preds["majority_class"] = np.full(len(truth), values[counts.argmax()], dtype=object)
    ann: dict[str, Any] = {}
    for name, pred in preds.items():
        ann[name] = {**bootstrap_accuracy(truth, pred, preds["pca_logreg"] if name != "pca_logreg" else None, seed=seed),
                     "macro_f1": float(f1_score(list(truth), list(pred), average="macro", zero_division=0)),
                     "n": len(truth)}
    report["annotation"] = ann
    report["annotation_protocol"] = (f"{len(truth)} cells of the val + test splits (never trained on); probe, probe + PCs "
                                     f"and PCA + LR: stratified {folds}-fold CV on those cells (same folds); kNN transfer "
                                     f"from the {len(train)} annotated training cells; 95% intervals: bootstrap over cells")
    report["n_cells"] = len(truth)
    val = every.subset(np.array([i for i, s in enumerate(every.ids) if of.get(s) == "val"], dtype=np.int64))
    test = every.subset(np.array([i for i, s in enumerate(every.ids) if of.get(s) == "test"], dtype=np.int64))
    try:  # blend weights fitted on the val split, scored on the test split
        report["imputation"] = evaluate_imputation(loaded, test if len(val) and len(test) else held, train, seed=seed,
                                                   ratio=HIDDEN_FRACTION, batch_size=vc.cfg.batch_size, calibration=val if len(val) and len(test) else None)
    except QueryError as exc:
        report["imputation"] = {"skipped": str(exc)}
    if vc.perturbation is not None:
        report["perturbation"] = vc.perturbation.metrics.get("held_out", {})
        report["perturbation"]["simulated"] = "SIMULATED knock-downs of real cells (biomm cells simulate-perturbation)"
    report["plots"] = {"tsne": plots.tsne_plot(np.concatenate([e_train, e_held]), list(y_train) + list(y_held),
                                               "cell embeddings (train + held-out)", out / "tsne.png").name,
                       "annotation": annotation_plot(ann, out / "annotation.png").name}
    if "methods" in report["imputation"]:
        report["plots"]["imputation"] = imputation_plot(report["imputation"], out / "imputation.png").name
    if "perturbation" in report and any(k in report["perturbation"] for k in ("seen", "held_out_seen_genes", "unseen_genes")):
        report["plots"]["perturbation"] = perturbation_plot(report["perturbation"], out / "perturbation.png").name
    return report


def _bars(ax, names: list[str], values: list[float], cis: list[list[float]], highlight: str | None = None) -> None:
    lo = [v - c[0] if np.isfinite(c[0]) else 0 for v, c in zip(values, cis)]
    hi = [c[1] - v if np.isfinite(c[1]) else 0 for v, c in zip(values, cis)]
    colors = ["tab:orange" if n == highlight or n.startswith("probe") or n == "model" else "tab:gray" for n in names]
    ax.bar(range(len(names)), values, yerr=[lo, hi], color=colors, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)


def _bar_plot(names: list[str], values, cis, ylabel: str, title: str, path: Path, size=(7, 4), ylim=None) -> Path:
    """One bar per method with its 95% interval, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    _bars(ax, names, values, cis)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def annotation_plot(ann: dict, path: Path) -> Path:
    """Accuracy of every annotation method with its 95% interval."""
    names = list(ann)
    return _bar_plot(names, [ann[n]["accuracy"] for n in names], [ann[n]["accuracy_ci95"] for n in names],
                     "accuracy (95% CI)", f"cell-type annotation, {ann[names[0]]['n']} held-out cells", path, ylim=(0, 1))


def imputation_plot(imp: dict, path: Path) -> Path:
    """MSE on hidden values: model, per-gene mean, kNN smoothing, with 95% intervals."""
    m = imp["methods"]
    return _bar_plot(list(m), [m[n]["mse"] for n in m], [m[n]["mse_ci95"] for n in m], "MSE on hidden values (95% CI)",
                     f"imputation: {imp['n_hidden']} hidden values, {imp['n_cells']} held-out cells", path, size=(5, 4))


def perturbation_plot(pert: dict, path: Path) -> Path:
    """One panel per cell-eval metric: every method, per group of held-out perturbations, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biomm.heads.cells.perturbation import METRICS

    groups = [g for g in ("seen", "held_out_seen_genes", "unseen_genes") if g in pert]
    fig, axes = plt.subplots(len(groups), len(METRICS), figsize=(4 * len(METRICS), 3.2 * len(groups)), squeeze=False)
    for r, g in enumerate(groups):
        for c, metric in enumerate(METRICS):
            names = list(pert[g])
            _bars(axes[r][c], names, [pert[g][n][metric] for n in names], [pert[g][n][f"{metric}_ci95"] for n in names])
            axes[r][c].set_title(f"{metric} ({g}, n={pert[g][names[0]]['n']})", fontsize=9)
    fig.suptitle("perturbation (SIMULATED knock-downs of real cells), cell-eval metrics", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(c) -> str:
    return f"[{c[0]:.3f}, {c[1]:.3f}]" if c and all(np.isfinite(c)) else "n/a"


def cells_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a cell-model evaluation: model against every baseline, with intervals."""
    lines = [f"# biomm eval: {report['model']} (cells) on {Path(report['cohort']).name}", "",
             report.get("annotation_protocol", ""), "",
             "## Cell-type annotation", "", "| method | accuracy | 95% CI | minus PCA+LR (95% CI) | macro-F1 |",
             "|---|---|---|---|---|"]
    for name, s in report["annotation"].items():
        diff = (f"{s['minus_pca_logreg']:+.3f} {_ci(s['minus_pca_logreg_ci95'])}" if "minus_pca_logreg" in s else "")
        lines.append(f"| {name} | {_fmt(s['accuracy'])} | {_ci(s['accuracy_ci95'])} | {diff} | {_fmt(s['macro_f1'])} |")
    imp = report.get("imputation", {})
    lines += ["", "## Masked expression imputation (hidden values of held-out cells)", ""]
    if "methods" in imp:
        lines += [f"{imp['n_hidden']} hidden values ({imp['hidden_fraction']:.0%} of {imp['n_genes']} HVGs) in "
                  f"{imp['n_cells']} held-out cells.", "",
                  "| method | MSE | 95% CI | − kNN smoothing (paired, 95% CI) | Pearson | MSE (nonzero) |",
                  "|---|---|---|---|---|---|"]
        for name, s in imp["methods"].items():
            diff = f"{s['mse_minus_knn']:+.4f} {_ci(s['mse_minus_knn_ci95'])}" if "mse_minus_knn" in s else ""
            lines.append(f"| {name} | {_fmt(s['mse'])} | {_ci(s['mse_ci95'])} | {diff} | {_fmt(s['pearson'])} | {_fmt(s['mse_nonzero'])} |")
    else:
        lines.append(str(imp.get("skipped", imp)))
    pert = report.get("perturbation")
    if pert:
        from biomm.heads.cells.perturbation import METRICS

        lines += ["", "## Perturbation response (SIMULATED knock-downs of real cells; cell-eval, real controls)", ""]
        for g in ("seen", "held_out_seen_genes", "unseen_genes"):
            if g not in pert:
                continue
            lines += [f"### {g}", "", "| method | n | " + " | ".join(f"{m} (95% CI) | {m} norm." for m in METRICS) + " |",
                      "|---|---|" + "---|---|" * len(METRICS)]
            for name, s in pert[g].items():
                cells = " | ".join(f"{_fmt(s[m])} {_ci(s[f'{m}_ci95'])} | {_fmt(s[f'{m}_normalised'])}" for m in METRICS)
                lines.append(f"| {name} | {s['n']} | {cells} |")
            lines.append("")
        lines.append("Normalised: improvement over the mean-perturbation baseline ((m-b)/(1-b); mae: (b-m)/b); > 0 is better.")
    for name in report.get("plots", {}).values():
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"
