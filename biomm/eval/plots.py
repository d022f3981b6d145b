"""PNG plots for evaluation reports (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], title: str, path: Path) -> Path:
    """curves: name -> (y, p, auroc)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, (y, p, auc) in curves.items():
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    else:  # one class only in the test split: nothing to draw, and the plot says so
        ax.text(0.5, 0.5, "one class only: no ROC curve", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration_plot(curves: dict[str, tuple[list[float], list[float]]], title: str, path: Path) -> Path:
    """Reliability curves: curves maps name -> (mean predicted probability, observed fraction)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    for name, (mean_p, frac) in curves.items():
        ax.plot(mean_p, frac, "o-", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def tsne_plot(x: np.ndarray, labels: list[str], title: str, path: Path, seed: int = 0) -> Path:
    """2-D t-SNE (scikit-learn, Barnes-Hut) of embeddings x [N, D] coloured by label.

    t-SNE rather than UMAP: umap-learn's numba kernels compile afresh in every process (about 25 s on 2 cores
    before the first point), t-SNE needs about 1 s for the few hundred points of a report."""
    from sklearn.manifold import TSNE

    n = len(x)
    coords = TSNE(2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca", random_state=seed).fit_transform(
        np.asarray(x, dtype=np.float32)) if n > 3 else np.zeros((n, 2))
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    for lab in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == lab]
        ax.scatter(coords[idx, 0], coords[idx, 1], s=8, label=lab)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def recall_plot(recall: dict[str, float], title: str, path: Path) -> Path:
    """Bars of recall@k per modality pair."""
    pairs = sorted({k.split("/", 1)[1] for k in recall if k.startswith("recall@")})
    ks = sorted({int(k.split("/")[0][7:]) for k in recall if k.startswith("recall@")})
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=110)
    width = 0.8 / max(1, len(ks))
    for i, k in enumerate(ks):
        ax.bar(np.arange(len(pairs)) + i * width, [recall.get(f"recall@{k}/{p}", 0) for p in pairs], width, label=f"@{k}")
    ax.set_xticks(np.arange(len(pairs)) + width * (len(ks) - 1) / 2, pairs, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="recall", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def few_shot_plot(rows: dict, title: str, path: Path) -> Path:
    """AUROC against k (positives per class, log2 axis; "all" = full data) per row, with 95% interval bands.
    rows: name -> {"few_shot": {k: {"auroc", "low"?, "high"?}}, "full": {"auroc", "auroc_low"?, "auroc_high"?}}."""
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ks = sorted({int(k) for r in rows.values() for k in r.get("few_shot", {})})
    x_all = (max(ks) * 2) if ks else 1
    for name, r in rows.items():
        pts = sorted((int(k), v) for k, v in r.get("few_shot", {}).items())
        xs, ys = [k for k, _ in pts], [v["auroc"] for _, v in pts]
        lo = [v.get("low", v["auroc"]) for _, v in pts]
        hi = [v.get("high", v["auroc"]) for _, v in pts]
        full = r.get("full", {})
        if full.get("auroc") is not None:
            xs, ys = xs + [x_all], ys + [full["auroc"]]
            lo, hi = lo + [full.get("auroc_low") or full["auroc"]], hi + [full.get("auroc_high") or full["auroc"]]
        style = "-" if name.startswith("biomm_fused") or name == "hybrid" else "--"
        line, = ax.plot(xs, ys, style, marker="o", ms=3, label=name)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    ticks = ks + [x_all]
    ax.set_xticks(ticks, [str(k) for k in ks] + ["all"])
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set(xlabel="k positives (and k negatives) per task", ylabel="AUROC", title=title, ylim=(0.3, 1.0))
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
