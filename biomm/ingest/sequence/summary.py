"""What a cohort holds in sequences: its section of `biomm cohort info`."""
from __future__ import annotations

from biomm.store.cohort import Cohort
from biomm.store.sequences import MODALITY, sequence_counts


def summary(cohort: Cohort) -> dict:
    """Files, sequences by alphabet, too long for the model, links by kind, quarantined records."""
    counts = sequence_counts(cohort)
    return {"files": len(cohort.records(MODALITY)), "sequences": counts["sequences"],
            "by_alphabet": counts["by_alphabet"], "too_long": counts["too_long"], "links": counts["links"],
            "quarantined": cohort.quarantine_count(MODALITY)}
