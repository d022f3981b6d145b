"""Config of the FHIR reader (`biomm ingest fhir`, the `ingest_fhir` pipeline step, POST /ingest)."""
from __future__ import annotations

from pydantic import Field

from biomm.config import DeidConfig, StrictModel


class FhirIngestConfig(StrictModel):
    """`biomm ingest fhir` settings: validation, worker processes, de-identification."""

    strict: bool = Field(False, description="Validate every resource with fhir.resources.R4B (slow)")
    workers: int = Field(0, ge=0, description="Decoding processes; 0 = one per core (up to 8) on 4+ cores with 16+ files, else in-process")
    deid: DeidConfig = DeidConfig()
