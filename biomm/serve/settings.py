"""`biomm serve --config FILE`: limits, CORS and the ingest configs the API uses (YAML, strict keys)."""
from __future__ import annotations

from pydantic import Field

from biomm.config import StrictModel
from biomm.ingest.ehr.config import FhirIngestConfig
from biomm.ingest.imaging.config import DicomIngestConfig


class ServeConfig(StrictModel):
    """Settings of `biomm serve`: body limits, CORS origins and the ingest configs of POST /ingest."""

    max_query_bytes: int = Field(64 * 1024, ge=1024, description="Largest body accepted outside /ingest (413 above)")
    max_ingest_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest /ingest body (413 above)")
    max_ingest_files: int = Field(200, ge=1, description="Most files in one /ingest request")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off")
    fhir_ingest: FhirIngestConfig = FhirIngestConfig()
    dicom_ingest: DicomIngestConfig = DicomIngestConfig()
