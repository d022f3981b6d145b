"""Configs of the EHR readers: FHIR (`biomm ingest fhir`, the `ingest_fhir` step, POST /ingest) and MEDS (`biomm ingest meds`)."""
from __future__ import annotations

from pydantic import Field

from biomm.config import DeidConfig, StrictModel


class FhirIngestConfig(StrictModel):
    """`biomm ingest fhir` settings: validation, worker processes, de-identification."""

    strict: bool = Field(False, description="Validate every resource with fhir.resources.R4B (slow)")
    workers: int = Field(0, ge=0, description="Decoding processes; 0 = one per core (up to 8) on 4+ cores with 16+ files, else in-process")
    deid: DeidConfig = DeidConfig()


class MedsIngestConfig(StrictModel):
    """`biomm ingest meds` settings: the dataset's splits and notes, de-identification."""

    keep_splits: bool = Field(True, description="Use the dataset's subject_splits (train/tuning/held_out -> train/val/test); else the hash split")
    notes_as_text: bool = Field(True, description="Events `NOTE/<kind>` with a text_value become the cohort's notes (the text modality)")
    deid: DeidConfig = DeidConfig()
