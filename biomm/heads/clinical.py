"""Clinical-reasoning head: prediction tasks on frozen biomm embeddings, and the honest baselines.

For each task a logistic-regression head (scikit-learn) is fitted on the training split's
embeddings at each sample's prediction time, on the fused embedding or on one modality's.
The bag-of-codes baseline (the PyHealth / MEDS-Tab recipe) sees the same events before the same
prediction times. Heads are saved as JSON (coefficients and scaler), so no pickle is loaded."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from biomm.data.samples import Sample
from biomm.data.ehr import EhrEvents
from biomm.types import Batch

HEADS_DIR = ("heads", "clinical")


@dataclass
class SampleEmbeddings:
    """Per-sample features: `fused` [N, D], per modality [N, D] and presence [N]."""

    samples: list[Sample]
    fused: np.ndarray
    modalities: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    def features(self, source: str) -> np.ndarray:
        """`fused`, or one modality's embedding with a presence indicator (absent rows are zeros + flag 0)."""
        if source == "fused":
            return self.fused
        emb = self.modalities[source] * self.present[source][:, None]
        return np.concatenate([emb, self.present[source][:, None].astype(np.float32)], 1)

    def labels(self, task: str) -> np.ndarray:
        """The samples' labels [N] of `task`."""
        return np.array([s.labels[task] for s in self.samples], dtype=np.float32)


def _drop(batch: Batch, modality: str) -> Batch:
    """The same batch with one modality marked absent (for occlusion)."""
    mods = dict(batch.modalities)
    inp = mods[modality]
    mods[modality] = type(inp)(inp.tensors, torch.zeros_like(inp.present))
    return Batch(mods, batch.subject_ids, batch.labels, batch.extras)


@torch.no_grad()
def embed_batch(model, batch: Batch) -> SampleEmbeddings:
    """One batch's embeddings (its samples are not kept)."""
    out = model(batch)
    n = batch.size
    mods = {m: (out.pooled[m].float().numpy() if m in out.pooled else np.zeros((n, model.config.d), np.float32))
            for m in batch.modalities}
    present = {m: out.present[m].numpy() if m in out.present else np.zeros(n, dtype=bool) for m in batch.modalities}
    return SampleEmbeddings([], out.fused.float().numpy(), mods, present)


@torch.no_grad()
def embed_samples(model, collate, samples: list[Sample], batch_size: int = 64,
                  drop: str | None = None) -> SampleEmbeddings:
    """Embed samples at their prediction times (only data before each time is seen)."""
    fused, mods, present = [], {}, {}
    for a in range(0, len(samples), batch_size):
        batch = collate(samples[a:a + batch_size])
        if drop is not None and drop in batch.modalities:
            batch = _drop(batch, drop)
        out = model(batch)
        fused.append(out.fused.float().numpy())
        for m in batch.modalities:
            e = out.pooled.get(m)
            mods.setdefault(m, []).append(e.float().numpy() if e is not None else np.zeros_like(fused[-1]))
            present.setdefault(m, []).append(out.present[m].numpy() if m in out.present else
                                             np.zeros(batch.size, dtype=bool))
    if not fused:
        d = model.config.d
        return SampleEmbeddings([], np.zeros((0, d), np.float32), {}, {})
    return SampleEmbeddings(samples, np.concatenate(fused), {m: np.concatenate(v) for m, v in mods.items()},
                            {m: np.concatenate(v) for m, v in present.items()})


class LinearHead:
    """Standardise, then L2 logistic regression with balanced classes (rare outcomes)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float, source: str, task: str):
        self.mean, self.scale, self.coef, self.intercept, self.source, self.task = mean, scale, coef, intercept, source, task

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, source: str, task: str, c: float = 0.1,
            scale_on: np.ndarray | None = None) -> "LinearHead":
        """Fit on features [N, F] and binary labels [N]; ValueError when the training split has one class.
        `scale_on` [M, F]: unlabelled features the standardiser is fitted on (default `x`): with a few labelled
        samples, scaling by their own spread turns every noise dimension into a unit-variance one."""
        if len(np.unique(y)) < 2:
            raise ValueError(f"task {task}: the training split has only one class ({int(y.sum())} positives of {len(y)})")
        scaler = StandardScaler().fit(x if scale_on is None else scale_on)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(scaler.transform(x), y)
        return cls(scaler.mean_, scaler.scale_, lr.coef_[0], float(lr.intercept_[0]), source, task)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N] of the positive class for features [N, F]."""
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> None:
        """Write the head as JSON (no pickle)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"task": self.task, "source": self.source, "mean": self.mean.tolist(),
                                          "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                                          "intercept": self.intercept}))

    @classmethod
    def load(cls, path: str | Path) -> "LinearHead":
        """Read what `save` wrote."""
        d = json.loads(Path(path).read_text())
        return cls(np.array(d["mean"]), np.array(d["scale"]), np.array(d["coef"]), d["intercept"], d["source"], d["task"])


# ---------------------------------------------------------------------------------------- baseline
def code_count_matrix(rows, n_rows: int, vocab: dict[str, int] | None = None):
    """Raw counts [n_rows, V] (scipy CSR, float32) from `rows`, an iterable of (row index, codes array).

    `vocab` (code -> column) is built from these rows when None, else codes outside it are dropped;
    returns (matrix, vocab). The one count builder of the cohort and the MEDS-folder baselines."""
    from scipy.sparse import csr_matrix

    build = vocab is None
    vocab = {} if vocab is None else dict(vocab)
    r, c, v = [], [], []
    for i, codes in rows:
        names, counts = np.unique(codes, return_counts=True)
        for name, n in zip(names, counts):
            j = vocab.get(name)
            if j is None and build:
                j = vocab[name] = len(vocab)
            if j is not None:
                r.append(i)
                c.append(j)
                v.append(n)
    x = csr_matrix((np.asarray(v, np.float32), (r, c)), shape=(n_rows, max(len(vocab), 1)))
    return x, vocab


def bag_of_codes(events: EhrEvents, samples: list[Sample], vocab: dict[str, int] | None = None):
    """Raw counts [N, V] of each code before each sample's prediction time; `vocab` from the training split."""
    def rows():
        for i, s in enumerate(samples):
            a, b = events.span(s.subject_id, s.prediction_time)
            yield i, events.codes_text[a:b]

    return code_count_matrix(rows(), len(samples), vocab)


class BagOfCodesBaseline:
    """log1p counts, TF-IDF, then balanced L2 logistic regression (C 0.1): the bag of codes a practitioner fits."""

    def __init__(self, c: float = 0.1):
        self.c = c

    def fit_counts(self, x, y: np.ndarray) -> "BagOfCodesBaseline":
        """Fit on raw counts `x` [N, V] and labels `y` [N]."""
        self.tfidf = TfidfTransformer().fit(x.log1p())
        self.lr = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000).fit(self.tfidf.transform(x.log1p()), y)
        return self

    def predict_counts(self, x) -> np.ndarray:
        """Probabilities [N] of the positive class for raw counts `x` [N, V] over the fitted vocabulary."""
        return self.lr.predict_proba(self.tfidf.transform(x.log1p()))[:, 1]

    def fit(self, events: EhrEvents, samples: list[Sample], task: str) -> "BagOfCodesBaseline":
        """Fit on the samples' events (its code vocabulary comes from these samples)."""
        x, self.vocab = bag_of_codes(events, samples)
        return self.fit_counts(x, np.array([s.labels[task] for s in samples]))

    def predict(self, events: EhrEvents, samples: list[Sample]) -> np.ndarray:
        """Probabilities [N] of the positive class for samples."""
        x, _ = bag_of_codes(events, samples, self.vocab)
        return self.predict_counts(x)


WINDOWS_DAYS = (30.0, 365.0, float("inf"))
"""MEDS-Tab look-back windows of the count features: 30 days, a year, all history."""


def count_features(events: EhrEvents, samples: list[Sample], windows: tuple[float, ...] = WINDOWS_DAYS,
                   columns: dict[str, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """MEDS-Tab-style tabular features [N, F] float32 of each sample's events at or before its prediction time:
    per look-back window, the count of each code and the last numeric value of each numeric code (NaN when
    none). `columns` (code -> index, default: every code of these samples) fixes the code set; returns the
    matrix and the feature names (`count/<window>/<code>`, `last/<window>/<code>`)."""
    if columns is None:
        seen: dict[str, int] = {}
        for s in samples:
            a, b = events.span(s.subject_id, s.prediction_time)
            for c in np.unique(events.codes_text[a:b]):
                seen.setdefault(str(c), len(seen))
        columns = seen
    numeric = sorted({str(c) for c in events.codes_text[events.value_mask]} & set(columns))
    num_col = {c: i for i, c in enumerate(numeric)}
    n_codes, n_num = len(columns), len(numeric)
    width = len(windows) * (n_codes + n_num)
    x = np.zeros((len(samples), width), np.float32)
    for w in range(len(windows)):
        x[:, w * (n_codes + n_num) + n_codes:(w + 1) * (n_codes + n_num)] = np.nan
    raw = events.values  # standardised per code: the last value's order is that of the raw value
    for i, s in enumerate(samples):
        if s.subject_id not in events:
            continue
        a, b = events.span(s.subject_id, s.prediction_time)
        codes, times, vmask = events.codes_text[a:b], events.times[a:b], events.value_mask[a:b]
        pt = s.prediction_time if s.prediction_time is not None else (times[-1] if len(times) else 0.0)
        for w, days in enumerate(windows):
            base = w * (n_codes + n_num)
            keep = times >= pt - days
            cs, counts = np.unique(codes[keep], return_counts=True)
            for c, n in zip(cs, counts):
                j = columns.get(str(c))
                if j is not None:
                    x[i, base + j] = n
            for j in np.flatnonzero(keep & vmask):  # ascending time: the last assignment is the last value
                k = num_col.get(str(codes[j]))
                if k is not None:
                    x[i, base + n_codes + k] = raw[a + j]
    names = [f"{kind}/{'all' if np.isinf(d) else f'{int(d)}d'}/{c}" for d in windows
             for kind, cols in (("count", list(columns)), ("last", numeric)) for c in cols]
    return x, names


class CountGBM:
    """The MEDS-Tab baseline: LightGBM on count / last-value features (fixed, commonly used hyperparameters,
    not tuned on the evaluation data)."""

    def __init__(self, seed: int = 0, n_estimators: int = 200) -> None:
        self.seed, self.n_estimators = seed, n_estimators

    def fit(self, x: np.ndarray, y: np.ndarray) -> "CountGBM":
        """Fit on features [N, F] (NaN = missing) and binary labels [N]."""
        from lightgbm import LGBMClassifier

        self.model = LGBMClassifier(n_estimators=self.n_estimators, learning_rate=0.05, num_leaves=15,
                                    min_child_samples=5, subsample=0.8, subsample_freq=1, colsample_bytree=0.5,
                                    reg_lambda=1.0, class_weight="balanced", random_state=self.seed, n_jobs=1,
                                    verbose=-1).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N] of the positive class for features [N, F]."""
        return self.model.predict_proba(x)[:, 1]


# ---------------------------------------------------------------------------------------- metrics
def binary_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float | int | None]:
    """AUROC, AUPRC, accuracy at 0.5, Brier, expected calibration error; None where undefined."""
    out: dict[str, float | int | None] = {"n": int(len(y)), "positives": int(y.sum())}
    both = 0 < y.sum() < len(y)
    out["auroc"] = float(roc_auc_score(y, p)) if both else None
    out["auprc"] = float(average_precision_score(y, p)) if both else None
    out["accuracy"] = float(((p >= 0.5) == (y >= 0.5)).mean()) if len(y) else None
    out["brier"] = float(brier_score_loss(y, p)) if len(y) else None
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    ece = sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean() for b in range(bins) if (idx == b).any())
    out["ece"] = float(ece) if len(y) else None
    return out


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[list[float], list[float]]:
    """(mean predicted probability, observed fraction) per non-empty probability bin."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    mean_p = [float(p[idx == b].mean()) for b in range(bins) if (idx == b).any()]
    frac = [float(y[idx == b].mean()) for b in range(bins) if (idx == b).any()]
    return mean_p, frac


def head_path(model_folder: Path, task: str, source: str = "fused") -> Path:
    """Where a task head fitted on `source` ("fused" or a modality) is saved in a model folder."""
    return model_folder.joinpath(*HEADS_DIR, f"{task}.{source}.json")
