"""`cohort info`: what a cohort holds, as one dict (printed as tables or JSON)."""
from __future__ import annotations

import importlib
from typing import Any

from biomm.store.cohort import Cohort

# Per-modality summaries contributed by the readers: modality -> "module:function(cohort) -> dict".
MODALITY_SUMMARIES = {
    "imaging": "biomm.ingest.dicom_summary:imaging_summary",
    "omics": "biomm.ingest.omics:omics_summary",
    "sequence": "biomm.ingest.sequence:sequence_summary",
}


def ehr_summary(cohort: Cohort) -> dict[str, Any]:
    shards = sorted(cohort.path("ehr", "events").glob("*.parquet"))
    if not shards:
        return {"events": 0}
    con = cohort.con
    src = f"read_parquet({[str(s) for s in shards]!r})"
    total, subjects, tmin, tmax = con.execute(
        f"SELECT count(*), count(DISTINCT subject_id), min(time), max(time) FROM {src}").fetchone()
    systems = con.execute(
        f"SELECT split_part(code, '/', 1) AS system, count(*) AS n FROM {src} GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {"events": total, "subjects_with_events": subjects, "time_min": str(tmin), "time_max": str(tmax),
            "events_per_code_system": dict(systems), "shards": len(shards)}


def cohort_summary(cohort: Cohort) -> dict[str, Any]:
    con = cohort.con
    subjects = dict(con.execute("SELECT kind, count(*) FROM subjects GROUP BY 1 ORDER BY 1").fetchall())
    modalities = dict(con.execute(
        "SELECT modality, count(DISTINCT subject_id) FROM records GROUP BY 1 ORDER BY 1").fetchall())
    records = dict(con.execute("SELECT modality, count(*) FROM records GROUP BY 1 ORDER BY 1").fetchall())
    splits = dict(con.execute("SELECT split, count(*) FROM splits GROUP BY 1 ORDER BY 1").fetchall())
    quarantine = [
        {"modality": m, "source": s, "record": r, "field": f, "reason": why}
        for m, s, r, f, why in con.execute(
            "SELECT modality, source_path, record, field, reason FROM quarantine ORDER BY created_at, quarantine_id"
        ).fetchall()
    ]
    out: dict[str, Any] = {
        "cohort": str(cohort.root),
        "deid": cohort.deid.enabled,
        "subjects": sum(subjects.values()),
        "subjects_by_kind": subjects,
        "subjects_by_modality": modalities,
        "records_by_modality": records,
        "splits": splits,
        "ehr": ehr_summary(cohort),
        "quarantine": {"count": len(quarantine), "entries": quarantine},
    }
    for modality, target in MODALITY_SUMMARIES.items():
        if modality not in records:
            continue
        module, fn = target.split(":")
        out[modality] = getattr(importlib.import_module(module), fn)(cohort)
    return out
