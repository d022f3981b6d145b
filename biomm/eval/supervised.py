"""`biomm eval` for a model fine-tuned with a supervised objective (e.g. the X-ray image path):
accuracy and AUROC of its trained head on the test split, beside a published reference."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomm.model.bundle import LoadedModel
from biomm.eval import plots
from biomm.eval.clinical import split_map
from biomm.heads.clinical import binary_metrics, calibration_curve

# MedMNIST v2 (Yang et al., Sci Data 2023), Table: PneumoniaMNIST, ResNet-18 (28), official test split (624).
REFERENCES = {"pneumonia": {"model": "MedMNIST v2 ResNet-18 (28 px)", "accuracy": 0.854, "auroc": 0.944,
                            "split": "official test split (624 images)"}}


@torch.no_grad()
def evaluate_supervised(loaded: LoadedModel, cohort: str | Path, out: str | Path) -> dict[str, Any]:
    """Accuracy, AUROC and calibration of the trained supervised head on the test split, beside the published reference."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    objectives = loaded.objectives()
    head = objectives.objectives["supervised"]
    dm = loaded.datamodule(cohort)
    split_of = split_map(cohort)
    test = [s for s in dm.samples["all"] if split_of.get(s.subject_id) == "test" and head.label in s.labels]
    ys, ps = [], []
    for a in range(0, len(test), 128):
        batch = dm.collate(test[a:a + 128])
        z, ok = head.logits(loaded.model(batch))
        y = batch.labels[head.label]
        keep = ok & ~torch.isnan(y)
        ys.append(y[keep].numpy())
        ps.append(torch.sigmoid(z[keep]).float().numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    metrics = binary_metrics(y, p)
    report: dict[str, Any] = {"kind": "supervised", "model": loaded.config.name, "cohort": str(cohort),
                              "label": head.label, "source": head.source, "test": metrics}
    ref = REFERENCES.get(head.label)
    if ref:
        report["reference"] = ref
        report["note"] = (f"not the same test set: {metrics['n']} test images of the shipped subsample vs the "
                          f"{ref['split']}; compare the order of magnitude, not the third decimal")
    report["plots"] = {
        "roc": plots.roc_plot({f"biomm {head.source}": (y, p, metrics["auroc"])}, head.label, out / "roc.png").name,
        "calibration": plots.calibration_plot({f"biomm {head.source}": calibration_curve(y, p)}, head.label,
                                              out / "calibration.png").name}
    return report


def supervised_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a supervised evaluation."""
    m, ref = report["test"], report.get("reference")
    lines = [f"# biomm eval: {report['model']} ({report['label']} from {report['source']})", "",
             "| model | test images | accuracy | AUROC |", "|---|---|---|---|",
             f"| biomm {report['source']} | {m['n']} | {m['accuracy']:.3f} | {m['auroc'] if m['auroc'] is None else round(m['auroc'], 3)} |"]
    if ref:
        lines.append(f"| {ref['model']} | {ref['split']} | {ref['accuracy']:.3f} | {ref['auroc']:.3f} |")
        lines += ["", report["note"]]
    lines += ["", f"![ROC]({report['plots']['roc']}) ![calibration]({report['plots']['calibration']})", ""]
    return "\n".join(lines)
