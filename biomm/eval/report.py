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


def write_report(report: dict[str, Any], out: str | Path, markdown: str) -> Path:
    """Write metrics.json and report.md into `out`; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown)
    return out / "report.md"
