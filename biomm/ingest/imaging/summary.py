"""What a cohort holds in imaging: its section of `biomm cohort info` about DICOM series."""
from __future__ import annotations

import json
from collections import Counter

from biomm.store.cohort import Cohort


def summary(cohort: Cohort) -> dict:
    """Series by DICOM modality, body part, kind and cached shape; linked (to an EHR subject) vs unlinked."""
    records = cohort.records("imaging")
    prov = [json.loads(r["provenance"]) if isinstance(r["provenance"], str) else (r["provenance"] or {}) for r in records]
    linked = Counter(p.get("linked_by") or "unlinked" for p in prov)
    return {
        "series": len(records),
        "instances": int(sum(r["n_items"] or 0 for r in records)),
        "subjects": len({r["subject_id"] for r in records}),
        "by_modality": dict(Counter(p.get("dicom_modality", "OT") for p in prov).most_common()),
        "by_body_part": dict(Counter(p.get("body_part") or "unknown" for p in prov).most_common()),
        "by_kind": dict(Counter(p.get("kind", "?") for p in prov).most_common()),
        "by_shape": dict(Counter("x".join(map(str, p.get("shape", []))) for p in prov).most_common()),
        "linked_series": len(records) - linked.get("unlinked", 0),
        "unlinked_series": linked.get("unlinked", 0),
        "linked_by": dict(linked),
        "burned_in_annotation": sum(bool(p.get("burned_in_annotation")) for p in prov),
        "quarantined_files": int(cohort.quarantine_count("imaging")),
    }
