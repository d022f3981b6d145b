"""One `ModalitySpec` per modality: every registry and if-chain of biomm reads from here.

A modality has one name everywhere (`ehr`, `imaging`, `omics`, `sequence`, `text`); the source
formats it is read from (FHIR, DICOM, AnnData, FASTA) are *readers* inside it. A spec names its
parts by `"module:attr"` so that this module imports nothing heavy (the CLI starts without torch):

    reader entries   ingest(sources, cohort, config=None, *, progress=True) -> IngestSummary
    store tables     DDL of the manifest tables the modality owns (created with the cohort)
    summary          summary(cohort) -> dict, its section of `biomm cohort info`
    data source      the class that turns a subject's records into the adapter's tensors
    adapter          the nn.Module: tensors -> Tokens(x [B, T, D], mask [B, T])
    schemas          config models with a checked-in JSON Schema (schemas/<name>.schema.json)

Adding a modality is one ingest folder, one data source, one adapter and one entry below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class ModalitySpec:
    """What biomm knows of one modality; the parts are named `"module:attr"` and imported on use."""

    name: str
    title: str
    adapter: str
    readers: Mapping[str, str] = field(default_factory=dict)
    reader_configs: Mapping[str, str] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    summary: str | None = None
    source: str | None = None
    kinds: tuple[str, ...] = ("patients",)
    schemas: Mapping[str, str] = field(default_factory=dict)

    def reader(self, name: str):
        """The ingest entry of reader `name`: `ingest(sources, cohort, config=None, *, progress=True)`."""
        if name not in self.readers:
            raise KeyError(f"modality {self.name} has no reader {name!r} (readers: {', '.join(self.readers) or 'none'})")
        return resolve(self.readers[name])

    def reader_config(self, name: str):
        """The config model (pydantic) of reader `name`."""
        return resolve(self.reader_configs[name])


def resolve(target: str) -> Any:
    """Import `"package.module:attr"` and return the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_SPECS = (
    ModalitySpec(
        name="ehr",
        title="health records (MEDS events)",
        readers={"fhir": "biomm.ingest.ehr.fhir:ingest", "meds": "biomm.ingest.ehr.meds:ingest"},
        reader_configs={"fhir": "biomm.ingest.ehr.config:FhirIngestConfig",
                        "meds": "biomm.ingest.ehr.config:MedsIngestConfig"},
        tables=(
            # no key constraint: DuckDB holds a primary key's index wholly in memory (see biomm.store.ehr)
            """CREATE TABLE IF NOT EXISTS fhir_resource_keys (
                key_hash BIGINT, resource_key VARCHAR, content_hash VARCHAR, source_checksum VARCHAR)""",
            "CREATE TABLE IF NOT EXISTS codes (code VARCHAR PRIMARY KEY, display VARCHAR)",
        ),
        summary="biomm.ingest.ehr.summary:summary",
        source="biomm.data.ehr:EhrSource",
        adapter="biomm.adapters.ehr:EhrAdapter",
        schemas={"fhir_ingest": "biomm.ingest.ehr.config:FhirIngestConfig",
                 "meds_ingest": "biomm.ingest.ehr.config:MedsIngestConfig"},
    ),
    ModalitySpec(
        name="imaging",
        title="images (DICOM series)",
        readers={"dicom": "biomm.ingest.imaging.dicom:ingest", "dicomweb": "biomm.ingest.imaging.dicomweb:ingest"},
        reader_configs={"dicom": "biomm.ingest.imaging.config:DicomIngestConfig",
                        "dicomweb": "biomm.ingest.imaging.config:DicomIngestConfig"},
        tables=(
            """CREATE TABLE IF NOT EXISTS imaging_studies (
                study_uid VARCHAR, series_uid VARCHAR, subject_id VARCHAR, time TIMESTAMP, modality VARCHAR,
                body_site VARCHAR, PRIMARY KEY (study_uid, series_uid))""",
        ),
        summary="biomm.ingest.imaging.summary:summary",
        source="biomm.data.imaging:ImagingSource",
        adapter="biomm.adapters.imaging:ImagingAdapter",
        schemas={"dicom_ingest": "biomm.ingest.imaging.config:DicomIngestConfig"},
    ),
    ModalitySpec(
        name="omics",
        title="single-cell expression (AnnData)",
        readers={"anndata": "biomm.ingest.omics.anndata:ingest"},
        reader_configs={"anndata": "biomm.ingest.omics.config:OmicsIngestConfig"},
        summary="biomm.ingest.omics.summary:summary",
        source=None,  # cells stream from the cohort's .h5ad (biomm.data.omics), one cell per subject
        kinds=("cells",),
        adapter="biomm.adapters.omics:OmicsAdapter",
        schemas={"omics_ingest": "biomm.ingest.omics.config:OmicsIngestConfig",
                 "omics_loader": "biomm.data.omics:OmicsLoaderConfig"},
    ),
    ModalitySpec(
        name="sequence",
        title="DNA and protein sequences (FASTA)",
        readers={"fasta": "biomm.ingest.sequence.fasta:ingest"},
        reader_configs={"fasta": "biomm.ingest.sequence.config:SequenceIngestConfig"},
        summary="biomm.ingest.sequence.summary:summary",
        source="biomm.data.sequence:SequenceSource",  # each stored sequence is a subject (data.kind: sequences)
        kinds=("sequences",),
        adapter="biomm.adapters.sequence:SequenceAdapter",
        schemas={"sequence_ingest": "biomm.ingest.sequence.config:SequenceIngestConfig"},
    ),
    ModalitySpec(
        name="text",
        title="notes and label prompts",
        source="biomm.data.text:NotesSource",  # notes come with the EHR reader (FHIR narratives)
        kinds=("patients", "cells", "sequences"),
        adapter="biomm.adapters.text:TextAdapter",
    ),
)

MODALITIES: Mapping[str, ModalitySpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Every modality by name (read-only)."""


def spec(name: str) -> ModalitySpec:
    """The spec of modality `name`; a KeyError lists the known ones."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r} (known: {', '.join(MODALITIES)})") from None


def reader_specs() -> dict[str, tuple[ModalitySpec, str]]:
    """Every reader name (fhir, dicom, dicomweb, anndata, fasta, ...) -> (its modality's spec, entry)."""
    return {r: (s, target) for s in MODALITIES.values() for r, target in s.readers.items()}
