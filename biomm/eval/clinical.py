"""`biomm eval` for clinical models: a protocol that can tell models apart on a small cohort.

Per task, every sample (subject, prediction time) is embedded once by the frozen model, and the count
features of its events before the same prediction time are computed once. Then:
- subject-level k-fold cross-validation (default 5 folds, repeated with 3 seeds; a subject's samples
  are all in one fold), so every subject is tested once per repeat. Out-of-fold AUROC and AUPRC, the
  mean over repeats, with a 95% interval from a subject-level (cluster) bootstrap;
- EHRSHOT-style few-shot curves: from each fold's training part, k = 1, 2, 4, ... positives and as many
  negatives (5 draws each), measured on the fold's test part; mean AUROC with a 95% interval (normal
  approximation over folds x draws), then "all" (the full-data cross-validation).
Rows, all on the same samples: `biomm_fused` (a linear probe on the model's fused embedding: no count
feature enters it), each modality's embedding alone, `biomm_all` (the fused embedding beside every
modality's, still the model's own output), the bag-of-codes LR, the MEDS-Tab-style count GBM
(LightGBM on counts and last values over 30 d / 365 d / all history), and `hybrid` (the frozen fused
embedding next to the bag of codes, one LR) as its own row. Task heads for `biomm query` are then fitted
on the train + val split."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from biomm.config import ConfigError
from biomm.data.samples import Sample
from biomm.data.tasks import TaskDef, build_samples, describe_samples
from biomm.eval import plots
from biomm.eval.metrics import auroc, average_precision, bootstrap_interval
from biomm.heads.clinical import (
    CountGBM,
    LinearHead,
    bag_of_codes,
    count_features,
    embed_samples,
    head_path,
)
from biomm.model.bundle import LoadedModel
from biomm.store.cohort import Cohort
from biomm.train.retrieval import pairwise_recall

KS = (1, 2, 4, 8, 16, 32, 64)
QUICK = {"seeds": (0,), "ks": (1, 4, 16), "draws": 2, "bootstrap": 50}
"""A cheaper protocol (one repeat, three k, two draws) for smoke runs and tests; the default is the full one."""
BASELINES = ("bag_of_codes_lr", "count_gbm")


def split_map(cohort: str | Path) -> dict[str, str]:
    """Every subject's split (train / val / test) in a cohort."""
    with Cohort(cohort, create=False, read_only=True) as c:
        return c.split_map()


def _with_required(samples: list[Sample], task: TaskDef, collate) -> list[Sample]:
    if not task.requires:
        return samples
    keep = []
    for a in range(0, len(samples), 128):
        chunk = samples[a:a + 128]
        batch = collate(chunk)
        ok = np.ones(len(chunk), bool)
        for m in task.requires:
            ok &= batch.modalities[m].present.numpy() if m in batch.modalities else False
        keep.extend(s for s, good in zip(chunk, ok) if good)
    return keep


# ------------------------------------------------------------------------------------ rows
Row = Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray], np.ndarray]
"""`row(train_idx, y_train, test_idx, seed, pool_idx) -> probabilities [len(test_idx)]` over one task's samples.
`pool_idx`: the whole training fold, unlabelled (few-shot rows train on a subset of it); feature scaling and
TF-IDF weights are fitted on it, the same for every row, and no label outside `train_idx` is read."""


def _lr(x: np.ndarray) -> Row:
    def row(tr, y, te, seed, pool):
        return LinearHead.fit(x[tr], y, "probe", "cv", scale_on=x[pool]).predict(x[te])
    return row


def _tfidf_lr(x, dense: np.ndarray | None = None) -> Row:
    """Bag of codes (TF-IDF, then balanced L2 LR), optionally beside standardised dense features (hybrid)."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def row(tr, y, te, seed, pool):
        tfidf = TfidfTransformer().fit(x[pool])
        a, b = tfidf.transform(x[tr]), tfidf.transform(x[te])
        if dense is not None:
            sc = StandardScaler().fit(dense[pool])
            # the embedding block weighs as much as the unit-norm TF-IDF row
            scale = 1.0 / np.sqrt(dense.shape[1])
            a = hstack([a, csr_matrix(sc.transform(dense[tr]) * scale)]).tocsr()
            b = hstack([b, csr_matrix(sc.transform(dense[te]) * scale)]).tocsr()
        lr = LogisticRegression(C=1.0 if dense is not None else 0.1, class_weight="balanced", max_iter=2000).fit(a, y)
        return lr.predict_proba(b)[:, 1]
    return row


def _gbm(x: np.ndarray) -> Row:
    def row(tr, y, te, seed, pool):
        return CountGBM(seed).fit(x[tr], y).predict(x[te])
    return row


def subject_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of a subject-level stratified k-fold split (a subject's samples share a fold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def cross_validate(rows: dict[str, Row], y: np.ndarray, groups: np.ndarray, folds: int = 5,
                   seeds: tuple[int, ...] = (0, 1, 2), ks: tuple[int, ...] = KS, draws: int = 5,
                   few_shot_seeds: int = 1, bootstrap: int = 200) -> dict[str, Any]:
    """The protocol on one task's samples: labels `y` [N], subject ids `groups` [N]. Returns, per row,
    `full` (out-of-fold AUROC / AUPRC, mean over repeats, 95% bootstrap intervals) and `few_shot`
    ({k: mean AUROC, 95% interval, n}) for each k with enough training positives."""
    n_pos_subjects = len(np.unique(groups[y == 1]))
    folds = min(folds, n_pos_subjects, len(np.unique(groups[y == 0])))
    if folds < 2:
        raise ValueError(f"{int(y.sum())} positive sample(s) from {n_pos_subjects} subject(s): too few to cross-validate")
    oof = {r: [] for r in rows}
    shots: dict[str, dict[int, list[float]]] = {r: {} for r in rows}
    for rep, seed in enumerate(seeds):
        preds = {r: np.full(len(y), np.nan) for r in rows}
        for tr, te in subject_folds(y, groups, folds, seed):
            for r, row in rows.items():
                preds[r][te] = row(tr, y[tr], te, seed, tr)
            if rep >= few_shot_seeds or not 0 < y[te].sum() < len(te):
                continue
            pos, neg = tr[y[tr] == 1], tr[y[tr] == 0]
            for k in ks:
                if k > len(pos) or k > len(neg):
                    continue
                for d in range(draws):
                    rng = np.random.default_rng([seed, k, d])
                    sub = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
                    for r, row in rows.items():
                        shots[r].setdefault(k, []).append(auroc(y[te], row(sub, y[sub], te, seed, tr)))
        for r in rows:
            oof[r].append(preds[r])
    out: dict[str, Any] = {"folds": folds, "repeats": len(seeds), "draws": draws}
    for r in rows:
        aucs = [auroc(y, p) for p in oof[r]]
        aps = [average_precision(y, p) for p in oof[r]]
        lo, hi = bootstrap_interval(y, oof[r], groups, auroc, bootstrap)
        plo, phi = bootstrap_interval(y, oof[r], groups, average_precision, bootstrap, seed=1)
        few = {}
        for k, vals in sorted(shots[r].items()):
            v = np.array([a for a in vals if a is not None])
            if len(v):
                half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
                few[str(k)] = {"auroc": float(v.mean()), "low": float(v.mean() - half), "high": float(v.mean() + half),
                               "n": int(len(v))}
        out[r] = {"full": {"auroc": float(np.mean([a for a in aucs if a is not None])) if any(a is not None for a in aucs) else None,
                           "auroc_low": lo, "auroc_high": hi,
                           "auprc": float(np.mean([a for a in aps if a is not None])) if any(a is not None for a in aps) else None,
                           "auprc_low": plo, "auprc_high": phi, "per_repeat": aucs},
                  "few_shot": few}
    return out


# ------------------------------------------------------------------------------------ tasks
def task_rows(emb, events, samples: list[Sample], modalities: list[str]) -> dict[str, Row]:
    """The protocol's rows for one task's samples (see the module doc)."""
    bag = bag_of_codes(events, samples)[0].log1p()
    counts, _ = count_features(events, samples)
    rows: dict[str, Row] = {"biomm_fused": _lr(emb.fused)}
    present = [m for m in modalities if m in emb.modalities and emb.present[m].any()]
    for m in present:
        rows[f"biomm_{m}"] = _lr(emb.features(m))
    if present:  # the model's whole output: the fused embedding beside each modality's (no count feature)
        rows["biomm_all"] = _lr(np.concatenate([emb.fused] + [emb.features(m) for m in present], 1))
    rows["bag_of_codes_lr"] = _tfidf_lr(bag)
    rows["count_gbm"] = _gbm(counts)
    rows["hybrid"] = _tfidf_lr(bag, emb.fused)
    return rows


def evaluate_task(loaded: LoadedModel, dm, task: TaskDef, cohort: Path, out: Path, split_of: dict[str, str],
                  save_head: bool = True, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """One task under the cross-validation protocol (every row on the same samples), with its few-shot plot;
    the fused head for `biomm query` is fitted on the train + val subjects."""
    events = dm.events
    samples = _with_required(build_samples(task, events, cohort), task, dm.collate)
    y = np.array([s.labels[task.name] for s in samples], dtype=float)
    groups = np.array([s.subject_id for s in samples])
    result: dict[str, Any] = {"task": task.name, "description": task.description.strip(),
                              "samples": describe_samples(samples, task.name)}
    emb = embed_samples(loaded.model, dm.collate, samples)
    try:
        cv = cross_validate(task_rows(emb, events, samples, loaded.modalities), y, groups, **(protocol or {}))
    except ValueError as err:
        result["skipped"] = f"not enough data: {err}"
        return result
    result["protocol"] = {k: cv.pop(k) for k in ("folds", "repeats", "draws")}
    result["rows"] = cv
    result["plots"] = {"few_shot": plots.few_shot_plot(cv, task.name, out / f"few_shot_{task.name}.png").name}
    train = np.array([split_of.get(s.subject_id) in ("train", "val") for s in samples])
    if save_head and len(np.unique(y[train])) == 2:
        LinearHead.fit(emb.fused[train], y[train], "fused", task.name).save(head_path(loaded.folder, task.name))
    return result


def summarise(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean AUROC over the evaluated tasks per row: full data (with the mean of the interval bounds) and per k
    (over the tasks that reach that k); and the targets of issue 12 checked on them."""
    done = {n: r["rows"] for n, r in tasks.items() if "rows" in r}
    if not done:
        return {}
    names = sorted({row for rows in done.values() for row in rows} & set.intersection(*(set(r) for r in done.values())))
    out: dict[str, Any] = {"tasks": sorted(done), "rows": {}}
    ks = sorted({int(k) for rows in done.values() for row in rows.values() for k in row["few_shot"]})
    for row in names:
        full = [done[t][row]["full"] for t in done if done[t][row]["full"]["auroc"] is not None]
        entry = {"full": {key: float(np.mean([f[key] for f in full if f[key] is not None])) if full else None
                          for key in ("auroc", "auroc_low", "auroc_high", "auprc")}, "few_shot": {}}
        for k in ks:
            vals = [done[t][row]["few_shot"][str(k)]["auroc"] for t in done if str(k) in done[t][row]["few_shot"]]
            if vals:
                entry["few_shot"][str(k)] = {"auroc": float(np.mean(vals)), "tasks": len(vals)}
        out["rows"][row] = entry
    rows = out["rows"]
    if "biomm_fused" in rows and "bag_of_codes_lr" in rows:
        fused, lr = rows["biomm_fused"], rows["bag_of_codes_lr"]
        gaps = {k: fused["few_shot"][k]["auroc"] - lr["few_shot"][k]["auroc"] for k in fused["few_shot"]
                if k in lr["few_shot"] and int(k) <= 32}
        best = max((b for b in BASELINES if b in rows), key=lambda b: rows[b]["full"]["auroc"] or 0.0)
        out["targets"] = {
            "fused_minus_lr_at_k<=32": gaps,
            "fused_ge_lr_at_every_k<=32": all(g >= 0 for g in gaps.values()) if gaps else None,
            "best_baseline": best,
            "fused_within_best_baseline_interval": (fused["full"]["auroc"] or 0) >= (rows[best]["full"]["auroc_low"] or 1),
            "hybrid_ge_best_baseline": (rows.get("hybrid", {}).get("full", {}).get("auroc") or 0)
            >= (rows[best]["full"]["auroc"] or 1),
        }
    return out


def evaluate_clinical(loaded: LoadedModel, cohort: str | Path, out: str | Path, tasks: dict[str, TaskDef],
                      names: list[str] | None = None, recall_k: tuple[int, ...] = (1, 5, 10),
                      protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every task (or `names`) under the protocol, the mean over tasks, cross-modal retrieval on the test split,
    and a t-SNE map of the fused embeddings. A shipped task that cannot apply to the cohort (no subject with its
    outcome) is reported as skipped; one named in `names` raises its ConfigError."""
    cohort, out = Path(cohort), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names or [] if n not in tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(sorted(tasks))}")
    dm = loaded.datamodule(cohort)
    split_of = split_map(cohort)
    results = {}
    for name in names or sorted(tasks):
        try:
            results[name] = evaluate_task(loaded, dm, tasks[name], cohort, out, split_of, protocol=protocol)
        except ConfigError as err:
            if names:
                raise
            results[name] = {"task": name, "description": tasks[name].description.strip(), "skipped": str(err)}
    report: dict[str, Any] = {"kind": "clinical", "model": loaded.config.name, "cohort": str(cohort),
                              "tasks": results, "summary": summarise(results)}
    if report["summary"]:
        report.setdefault("plots", {})["few_shot_mean"] = plots.few_shot_plot(
            report["summary"]["rows"], "mean over tasks", out / "few_shot_mean.png").name
    test_samples = [s for s in dm.samples["all"] if split_of.get(s.subject_id) == "test"]
    emb = embed_samples(loaded.model, dm.collate, test_samples)
    recall = pairwise_recall({m: _t(v) for m, v in emb.modalities.items()},
                             {m: _t(v) for m, v in emb.present.items()}, list(recall_k))
    report["retrieval_test"] = recall
    if recall:
        report.setdefault("plots", {})["recall"] = plots.recall_plot(
            recall, "cross-modal retrieval (test split)", out / "recall.png").name
    if len(emb.samples) > 3:
        labels = ["has imaging" if emb.present.get("imaging", np.zeros(len(emb.samples), bool))[i] else "no imaging"
                  for i in range(len(emb.samples))]
        report.setdefault("plots", {})["tsne"] = plots.tsne_plot(
            emb.fused, labels, "fused embeddings (test split)", out / "tsne.png").name
    return report


def _fmt(v: Any, interval: tuple[Any, Any] | None = None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if interval and interval[0] is not None:
        text += f" ({interval[0]:.3f}–{interval[1]:.3f})"
    return text


def clinical_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the mean over tasks (full data and few-shot), then per task the rows and the plot."""
    lines = [f"# biomm eval: {report['model']} on {Path(report['cohort']).name}", "",
             "Subject-level cross-validation (every subject tested once per repeat); AUROC / AUPRC out of fold,",
             "mean over repeats, 95% subject-level bootstrap intervals. Few-shot: k positives and k negatives drawn",
             "from each fold's training part (AUROC, mean over folds x draws). Every row sees the same samples:",
             "the same events before the same prediction times. `biomm_fused` is the model's embedding alone.", ""]
    summary = report.get("summary") or {}
    if summary:
        ks = sorted({int(k) for r in summary["rows"].values() for k in r["few_shot"]})
        lines += [f"## Mean over tasks ({', '.join(summary['tasks'])})", "",
                  "| row | AUROC (all) | " + " | ".join(f"k={k}" for k in ks) + " |",
                  "|---|---|" + "---|" * len(ks)]
        for row, r in summary["rows"].items():
            f = r["full"]
            lines.append(f"| {row} | {_fmt(f['auroc'], (f['auroc_low'], f['auroc_high']))} | " + " | ".join(
                _fmt(r["few_shot"].get(str(k), {}).get("auroc")) for k in ks) + " |")
        if "targets" in summary:
            lines += ["", "Targets: " + ", ".join(f"{k} = {_fmt(v) if not isinstance(v, dict) else {kk: round(vv, 3) for kk, vv in v.items()}}"
                                                  for k, v in summary["targets"].items())]
        if "few_shot_mean" in report.get("plots", {}):
            lines += ["", f"![few-shot, mean over tasks]({report['plots']['few_shot_mean']})"]
        lines.append("")
    for name, r in report["tasks"].items():
        lines += [f"## {name}", "", r["description"], ""]
        if "skipped" in r:
            lines += [f"Skipped: {r['skipped']}", ""]
            continue
        p = r["protocol"]
        lines += [f"samples: {r['samples']}; {p['folds']} folds x {p['repeats']} repeats, {p['draws']} few-shot draws", "",
                  "| row | AUROC | AUPRC | " + " | ".join(f"k={k}" for k in KS) + " |", "|---|---|---|" + "---|" * len(KS)]
        for row, m in r["rows"].items():
            f = m["full"]
            lines.append(f"| {row} | {_fmt(f['auroc'], (f['auroc_low'], f['auroc_high']))} | "
                         f"{_fmt(f['auprc'], (f['auprc_low'], f['auprc_high']))} | "
                         + " | ".join(_fmt(m["few_shot"].get(str(k), {}).get("auroc")) for k in KS) + " |")
        lines += ["", f"![few-shot]({r['plots']['few_shot']})", ""]
    if report.get("retrieval_test"):
        lines += ["## Cross-modal retrieval (test split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(report["retrieval_test"].items())]
        lines.append("")
    for name in ("recall", "tsne"):
        if name in report.get("plots", {}):
            lines += [f"![{name}]({report['plots'][name]})", ""]
    return "\n".join(lines)


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(a))
