"""Evaluation reports: metrics.json plus a Markdown page that shows the tables and the PNG plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def clinical_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a clinical evaluation: per task the metrics table and the plots."""
    lines = [f"# biomm eval: {report['model']} on {Path(report['cohort']).name}", "",
             "Heads are fitted on the train+val subjects and measured on the test subjects (split by a hash of",
             "the subject id). Every row sees the same samples: the same events before the same prediction times.",
             ""]
    for name, r in report["tasks"].items():
        lines += [f"## {name}", "", r["description"], "",
                  f"train: {r['train']}  ", f"test: {r['test']}", ""]
        if "skipped" in r:
            lines += [f"Skipped: {r['skipped']}", ""]
            continue
        lines += ["| model | AUROC | AUPRC | accuracy | Brier | ECE |", "|---|---|---|---|---|---|"]
        for model, m in r["metrics"].items():
            lines.append(f"| {model} | {_fmt(m['auroc'])} | {_fmt(m['auprc'])} | {_fmt(m['accuracy'])} | "
                         f"{_fmt(m['brier'])} | {_fmt(m['ece'])} |")
        lines += ["", f"![ROC]({r['plots']['roc']}) ![calibration]({r['plots']['calibration']})", ""]
    if report.get("retrieval_test"):
        lines += ["## Cross-modal retrieval (test split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(report["retrieval_test"].items())]
        lines.append("")
    for name in ("recall", "umap"):
        if name in report.get("plots", {}):
            lines += [f"![{name}]({report['plots'][name]})", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: str | Path, markdown: str) -> Path:
    """Write metrics.json and report.md into `out`; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    return out / "report.md"
