"""`biomm eval` for clinical models: every task fitted on the training split (train + val), measured on
the test split, against the bag-of-codes baseline and each modality alone, plus retrieval recall@k."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomm.model.bundle import LoadedModel
from biomm.data.samples import Sample
from biomm.data.tasks import TaskDef, build_samples, describe_samples
from biomm.eval import plots
from biomm.train.retrieval import pairwise_recall
from biomm.heads.clinical import (
    BagOfCodesBaseline,
    LinearHead,
    binary_metrics,
    calibration_curve,
    embed_samples,
    head_path,
)
from biomm.store.cohort import Cohort


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


def evaluate_task(loaded: LoadedModel, dm, task: TaskDef, cohort: Path, out: Path, split_of: dict[str, str],
                  save_head: bool = True) -> dict[str, Any]:
    """One task: heads on the fused embedding and on each modality alone, and the bag-of-codes baseline, fitted on train+val and measured on test (with ROC and calibration plots)."""
    events = dm.events
    samples = _with_required(build_samples(task, events, cohort), task, dm.collate)
    train = [s for s in samples if split_of.get(s.subject_id) in ("train", "val")]
    test = [s for s in samples if split_of.get(s.subject_id) == "test"]
    result: dict[str, Any] = {"task": task.name, "description": task.description.strip(),
                              "train": describe_samples(train, task.name), "test": describe_samples(test, task.name)}
    y_train = np.array([s.labels[task.name] for s in train])
    y_test = np.array([s.labels[task.name] for s in test])
    if len(np.unique(y_train)) < 2 or not len(test):
        result["skipped"] = (f"not enough data: {int(y_train.sum())} positive of {len(train)} training samples, "
                             f"{len(test)} test samples")
        return result
    e_train = embed_samples(loaded.model, dm.collate, train)
    e_test = embed_samples(loaded.model, dm.collate, test)
    curves, calib, scores = {}, {}, {}
    for source in ["fused", *loaded.modalities]:
        if source != "fused" and source not in e_train.modalities:
            continue
        if source != "fused" and not e_train.present[source].any():
            continue
        head = LinearHead.fit(e_train.features(source), y_train, source, task.name)
        p = head.predict(e_test.features(source))
        name = f"biomm_{source}"
        scores[name] = binary_metrics(y_test, p)
        curves[name] = (y_test, p, scores[name]["auroc"])
        calib[name] = calibration_curve(y_test, p)
        if source == "fused" and save_head:
            head.save(head_path(loaded.folder, task.name))
    base = BagOfCodesBaseline().fit(events, train, task.name)
    p = base.predict(events, test)
    scores["bag_of_codes_lr"] = binary_metrics(y_test, p)
    curves["bag of codes (LR)"] = (y_test, p, scores["bag_of_codes_lr"]["auroc"])
    calib["bag of codes (LR)"] = calibration_curve(y_test, p)
    result["metrics"] = scores
    result["plots"] = {
        "roc": str(plots.roc_plot(curves, task.name, out / f"roc_{task.name}.png").name),
        "calibration": str(plots.calibration_plot(calib, task.name, out / f"calibration_{task.name}.png").name),
    }
    return result


def evaluate_clinical(loaded: LoadedModel, cohort: str | Path, out: str | Path, tasks: dict[str, TaskDef],
                      names: list[str] | None = None, recall_k: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Every task (or `names`), cross-modal retrieval on the test split, and a UMAP of the fused embeddings."""
    cohort, out = Path(cohort), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in names or [] if n not in tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(sorted(tasks))}")
    dm = loaded.datamodule(cohort)
    split_of = split_map(cohort)
    results = {name: evaluate_task(loaded, dm, tasks[name], cohort, out, split_of) for name in (names or sorted(tasks))}
    # retrieval and a picture of the embedding space, on the test split's subjects (latest record each)
    test_samples = [s for s in dm.samples["all"] if split_of.get(s.subject_id) == "test"]
    emb = embed_samples(loaded.model, dm.collate, test_samples)
    recall = pairwise_recall({m: _t(v) for m, v in emb.modalities.items()},
                             {m: _t(v) for m, v in emb.present.items()}, list(recall_k))
    report: dict[str, Any] = {"kind": "clinical", "model": loaded.config.name, "cohort": str(cohort),
                              "tasks": results, "retrieval_test": recall}
    if recall:
        report["plots"] = {"recall": plots.recall_plot(recall, "cross-modal retrieval (test split)", out / "recall.png").name}
    if len(emb.samples) > 3:
        labels = ["has imaging" if emb.present.get("imaging", np.zeros(len(emb.samples), bool))[i] else "no imaging"
                  for i in range(len(emb.samples))]
        report.setdefault("plots", {})["umap"] = plots.umap_plot(
            emb.fused, labels, "fused embeddings (test split)", out / "umap.png").name
    return report


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(a))
