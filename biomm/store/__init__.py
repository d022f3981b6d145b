"""The cohort store: a folder with a DuckDB manifest, MEDS event shards, cached tensors, quarantine."""
from biomm.store.cohort import Cohort, CohortError
from biomm.store.deid import Deidentifier

__all__ = ["Cohort", "CohortError", "Deidentifier"]
