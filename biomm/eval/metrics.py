"""Ranking metrics on binary labels and their subject-level bootstrap interval, fast enough for thousands
of resamples: AUROC as the Mann-Whitney statistic on average ranks, average precision over tied-score
thresholds, both equal to sklearn's (`roc_auc_score`, `average_precision_score`; ties included, a hypothesis
test checks it) and 10-20x faster. Hand-written for that speed; None where the labels hold one class."""
from __future__ import annotations

import numpy as np


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """AUROC of scores `p` [N] for labels `y` [N] (None with one class): the Mann-Whitney statistic on average
    ranks, equal to sklearn's `roc_auc_score` (ties included) and ~20x faster, which the bootstrap needs."""
    from scipy.stats import rankdata

    y = np.asarray(y) == 1
    n1 = int(y.sum())
    n0 = len(y) - n1
    if not n1 or not n0:
        return None
    return float((rankdata(p)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """Average precision of `p` [N] for `y` [N] (None with one class): sum over thresholds of the recall step
    times the precision, tied scores one threshold; equal to sklearn's `average_precision_score`, faster."""
    y = np.asarray(y) == 1
    if not 0 < y.sum() < len(y):
        return None
    order = np.argsort(-np.asarray(p), kind="mergesort")
    ps, ys = np.asarray(p)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # the last index of each group of tied scores
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_interval(y: np.ndarray, preds: list[np.ndarray], groups: np.ndarray, metric, n: int = 200,
                       seed: int = 0) -> tuple[float | None, float | None]:
    """95% interval of the repeat-mean `metric(y, p)` under a subject-level (cluster) bootstrap."""
    rng = np.random.default_rng(seed)
    subjects, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(subjects))]
    values = []
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(subjects), len(subjects))])
        per = [metric(y[idx], p[idx]) for p in preds]
        per = [v for v in per if v is not None]
        if per:
            values.append(float(np.mean(per)))
    if len(values) < n // 2:
        return None, None
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))
