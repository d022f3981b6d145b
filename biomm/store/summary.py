"""`cohort info`: what a cohort holds, as one dict (printed as tables or JSON).

The core counts come from the manifest; each modality's section from its spec's `summary` function
(`biomm.modalities`), for the modalities the cohort has records of. The `ehr` section is always
there (`{"events": 0}` in a cohort without events), as `cohort info` has always shown it."""
from __future__ import annotations

from typing import Any

from biomm.modalities import MODALITIES, resolve
from biomm.store.cohort import Cohort

ALWAYS = ("ehr",)


def modality_sections(cohort: Cohort, records: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each modality's section of `cohort info` (its spec's summary), for the modalities with records."""
    return {name: resolve(spec.summary)(cohort) for name, spec in MODALITIES.items()
            if spec.summary and (name in records or name in ALWAYS)}


def cohort_summary(cohort: Cohort) -> dict[str, Any]:
    """Subjects by kind and modality, records, splits, each modality's section and the quarantine."""
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
    sections = modality_sections(cohort, records)
    return {
        "cohort": str(cohort.root),
        "deid": cohort.deid.enabled,
        "subjects": sum(subjects.values()),
        "subjects_by_kind": subjects,
        "subjects_by_modality": modalities,
        "records_by_modality": records,
        "splits": splits,
        **{name: sections.pop(name) for name in ALWAYS if name in sections},
        "quarantine": {"count": len(quarantine), "entries": quarantine},
        **sections,
    }
