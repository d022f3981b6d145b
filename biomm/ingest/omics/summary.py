"""What a cohort holds in single-cell omics: its section of `biomm cohort info`."""
from __future__ import annotations

import json

from biomm.store.cohort import Cohort

MODALITY = "omics"


def summary(cohort: Cohort) -> dict:
    """Files, cells, genes, input states, vocabulary coverage and label keys, and quarantined sources."""
    files = []
    for r in cohort.records(MODALITY):
        p = json.loads(r["provenance"]) if isinstance(r["provenance"], str) else (r["provenance"] or {})
        files.append({"path": r["path"], "cells": r["n_items"], "genes": p.get("n_genes"), "state": p.get("state"),
                      "value_kind": p.get("value_kind"),
                      "format": p.get("format"), "vocab_fraction": round(p.get("vocab_coverage", {}).get("fraction", 0), 3),
                      "label_keys": p.get("label_keys", [])})
    return {"files": len(files), "cells": sum(f["cells"] or 0 for f in files),
            "quarantined": cohort.quarantine_count(MODALITY), "by_file": files}
