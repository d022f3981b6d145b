"""Dispatch `biomm eval` by model kind, write metrics.json and report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from biomm.model.bundle import load


def run_eval(model: str | Path, cohort: str | Path, out: str | Path | None, tasks: list[str],
             task_dirs: list[str | Path], protocol: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate a model on a cohort by its kind (supervised, clinical tasks, cells); returns (report, report.md path).
    `protocol`: keyword arguments of `biomm.eval.clinical.cross_validate` (folds, seeds, ks, draws, bootstrap)."""
    from biomm.eval.report import write_report

    loaded = load(model)
    out = Path(out) if out else loaded.folder / "eval"
    if loaded.kind == "patients" and loaded.config.model.objectives.supervised.weight > 0 and "ehr" not in loaded.modalities:
        from biomm.eval.supervised import evaluate_supervised, supervised_markdown

        report = evaluate_supervised(loaded, cohort, out)
        return report, write_report(report, out, supervised_markdown(report))
    if loaded.kind == "patients":
        from biomm.data.tasks import load_tasks
        from biomm.eval.clinical import clinical_markdown, evaluate_clinical

        from biomm.eval.retrieval import evaluate_retrieval, retrieval_markdown

        report = evaluate_clinical(loaded, cohort, out, load_tasks(task_dirs), tasks or None, protocol=protocol)
        report["retrieval"] = evaluate_retrieval(loaded, cohort, out)
        return report, write_report(report, out, clinical_markdown(report) + "\n" + retrieval_markdown(report["retrieval"]))
    if loaded.kind == "sequences":
        from biomm.eval.sequences import evaluate_sequences, sequences_markdown

        report = evaluate_sequences(loaded, cohort, out)
        return report, write_report(report, out, sequences_markdown(report))
    from biomm.eval.cells import cells_markdown, evaluate_cells

    report = evaluate_cells(loaded, cohort, out)
    return report, write_report(report, out, cells_markdown(report))
