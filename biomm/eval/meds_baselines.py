"""Clinical baselines run from a MEDS dataset alone (a `biomm export meds` folder, or any MEDS v0.4 dataset with
MEDS label files): no cohort, no biomm model, only `data/`, `metadata/subject_splits.parquet` and a label file,
read with pyarrow.

Features of a label row (subject, prediction_time) are the counts of each code among the subject's rows at
or before the prediction time (static rows, without a time, always count), over the codes seen in the
training rows. Two models, fitted on the train + tuning subjects and measured on held_out:
- bag of codes: log1p counts, TF-IDF, balanced L2 logistic regression (C 0.1), the recipe of the cohort's
  `BagOfCodesBaseline`;
- count GBM: sklearn's histogram gradient boosting on the raw counts of the most frequent codes.
AUROC and AUPRC carry a 95% bootstrap interval with subjects resampled (a subject's rows stay together)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import csr_matrix

from biomm.heads.clinical import BagOfCodesBaseline, code_count_matrix

MAX_GBM_CODES = 512


def read_labels(root: str | Path, task: str) -> pa.Table:
    """The MEDS label rows of `task` (`labels/<task>/*.parquet`, or a label file/folder path), sorted."""
    path = Path(task) if Path(task).exists() else Path(root) / "labels" / task
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no MEDS label files for task {task!r} under {path}")
    table = pa.concat_tables([pq.read_table(f, columns=["subject_id", "prediction_time", "boolean_value"]) for f in files])
    return table.sort_by([("subject_id", "ascending"), ("prediction_time", "ascending")])


def code_counts(root: str | Path, labels: pa.Table, vocab: dict[str, int] | None = None) -> tuple[csr_matrix, dict[str, int]]:
    """Counts [N, V] of each code at or before each label row's prediction time; `vocab` (code -> column) is
    built from these rows when None, else codes outside it are dropped."""
    root = Path(root)
    sids = labels.column("subject_id").to_numpy()
    ptime = labels.column("prediction_time").cast(pa.int64()).to_numpy()
    wanted = pa.array(np.unique(sids), pa.int64())
    row_of: dict[int, list[int]] = {}
    for i, s in enumerate(sids.tolist()):
        row_of.setdefault(s, []).append(i)

    def rows():
        for shard in sorted((root / "data").rglob("*.parquet")):
            t = pq.read_table(shard, columns=["subject_id", "time", "code"])
            t = t.filter(pc.is_in(t.column("subject_id"), value_set=wanted))
            if not t.num_rows:
                continue
            sid = t.column("subject_id").to_numpy()
            time = pc.fill_null(t.column("time").cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
            codes = t.column("code").to_numpy(zero_copy_only=False)
            starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
            ends = np.r_[starts[1:], len(sid)]
            for a, b in zip(starts, ends):
                for i in row_of.get(int(sid[a]), ()):
                    yield i, codes[a:a + int(np.searchsorted(time[a:b], ptime[i], side="right"))]

    return code_count_matrix(rows(), len(sids), vocab)


def _auc_ci(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUROC and AUPRC with a 95% subject-bootstrap interval (None where one class is missing)."""
    from biomm.eval.metrics import auroc, average_precision, bootstrap_interval

    if len(np.unique(y)) < 2:
        return {"auroc": None, "auprc": None}
    ci = lambda metric: [None if v is None else round(v, 4)  # noqa: E731
                         for v in bootstrap_interval(y, [p], groups, metric, n_boot, seed)]
    return {"auroc": round(auroc(y, p), 4), "auroc_ci95": ci(auroc),
            "auprc": round(average_precision(y, p), 4), "auprc_ci95": ci(average_precision)}


def run_baselines(root: str | Path, task: str, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Both baselines on one task of a MEDS dataset: fitted on train + tuning subjects, measured on held_out."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    root = Path(root)
    labels = read_labels(root, task)
    splits = pq.read_table(root / "metadata" / "subject_splits.parquet")
    split_of = dict(zip(splits.column("subject_id").to_pylist(), splits.column("split").to_pylist()))
    split = np.array([split_of.get(s, "") for s in labels.column("subject_id").to_pylist()])
    train_t = labels.filter(pa.array(np.isin(split, ["train", "tuning"])))
    test_t = labels.filter(pa.array(split == "held_out"))
    y_train = train_t.column("boolean_value").to_numpy(zero_copy_only=False).astype(int)
    y_test = test_t.column("boolean_value").to_numpy(zero_copy_only=False).astype(int)
    out: dict[str, Any] = {"dataset": str(root), "task": task, "inputs": "MEDS data shards, subject_splits, label file",
                           "train": {"rows": int(len(y_train)), "positives": int(y_train.sum())},
                           "held_out": {"rows": int(len(y_test)), "positives": int(y_test.sum())}}
    if len(np.unique(y_train)) < 2 or not len(y_test):
        out["skipped"] = "not enough data: the training rows need both classes and held_out needs rows"
        return out
    x_train, vocab = code_counts(root, train_t)
    x_test, _ = code_counts(root, test_t, vocab)
    groups = test_t.column("subject_id").to_numpy()
    p_lr = BagOfCodesBaseline().fit_counts(x_train, y_train).predict_counts(x_test)
    top = np.argsort(-np.asarray((x_train > 0).sum(axis=0)).ravel(), kind="stable")[:MAX_GBM_CODES]
    gbm = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, class_weight="balanced", random_state=seed)
    gbm.fit(x_train[:, top].toarray(), y_train)
    p_gbm = gbm.predict_proba(x_test[:, top].toarray())[:, 1]
    out["codes"] = len(vocab)
    out["bag_of_codes_lr"] = _auc_ci(y_test, p_lr, groups, n_boot, seed)
    out["count_gbm"] = {**_auc_ci(y_test, p_gbm, groups, n_boot, seed), "codes_used": int(len(top))}
    return out
