"""`biomm cohort label-xrays` and the `import_xray_labels` step: image-level labels into the cohort's labels
table (name `xray_pneumonia`), dated by their study, for the `xray_pneumonia` task."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

from biomm.commands.apps import cohort_app
from biomm.commands.common import console, user_errors
from biomm.pipeline import PipelineContext, step

LABEL = "xray_pneumonia"


def import_xray_labels(cohort: str | Path, linkage_csv: str | Path) -> dict:
    """Label each linked X-ray series of the cohort with its class from linkage.csv; returns the counts."""
    from biomm.heads.qa.questions import xray_labels
    from biomm.store.cohort import Cohort

    n = positives = 0
    with Cohort(cohort, create=False) as c:
        labels = xray_labels(c, linkage_csv)
        for rec in c.records("imaging"):
            prov = json.loads(rec["provenance"]) if isinstance(rec["provenance"], str) else rec["provenance"] or {}
            series = prov.get("series_uid") or rec["record_id"]
            if series not in labels or not prov.get("study_date"):
                continue
            when = datetime.strptime(prov["study_date"][:8], "%Y%m%d")
            c.set_label(rec["subject_id"], LABEL, labels[series], when, source=f"linkage:{Path(linkage_csv).name}")
            n += 1
            positives += labels[series]
    return {"labels": n, "positives": positives}


@cohort_app.command("label-xrays")
def label_xrays_cmd(cohort: Path = typer.Argument(..., help="Cohort folder"),
                    linkage: Path = typer.Option(..., "--linkage", help="linkage.csv written with the linked X-rays")) -> None:
    """Record each linked X-ray's class (0 normal / 1 pneumonia) as a dated cohort label."""
    with user_errors():
        info = import_xray_labels(cohort, linkage)
    console.print(f"{info['labels']} X-ray labels ({info['positives']} pneumonia)")


@step("import_xray_labels")
def import_xray_labels_step(ctx: PipelineContext, cohort: str, linkage: str) -> dict:
    """Pipeline step: `with: {cohort: DIR, linkage: linkage.csv}`."""
    info = import_xray_labels(ctx.path(cohort), ctx.path(linkage))
    console.print(f"{info['labels']} X-ray labels ({info['positives']} pneumonia)")
    return info
