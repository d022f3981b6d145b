"""POST /ingest: uploaded FHIR Bundles and DICOM instances into the cohort, all or nothing.

The request's files are checked (a JSON Bundle, or a DICOM Part 10 file), staged under neutral names
(upload-N.json / upload-N.dcm, so no uploaded file name reaches the cohort or a log), and ingested into a
copy of the cohort (immutable data files hard-linked, the manifest copied). Only when every step has
succeeded is the copy swapped in by two renames and the query engine refreshed; on any failure the copy
is deleted and the served cohort is as it was. Readers are held off only for the swap itself."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from biomm.ingest.base import IngestSummary, QuarantineEntry
from biomm.serve.state import ServeState

log = logging.getLogger("biomm.serve")
LINKABLE = {".parquet", ".npz", ".dcm"}  # written once (atomic rename), never modified in place


class UploadError(ValueError):
    """An upload that is not a FHIR Bundle or a DICOM file (maps to 4xx with the reason)."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.status = status


class IngestReport(BaseModel):
    """What POST /ingest did: status, files per kind, new subjects, counts, quarantine and warnings."""

    status: str = Field(..., description="ingested | partial (some input quarantined) | quarantined (nothing written)")
    files: dict[str, int] = Field(default_factory=dict, description="Files per kind (fhir, dicom)")
    subjects_added: int = 0
    new_subjects: list[str] = Field(default_factory=list, description="Pseudonymous ids of the new subjects")
    records_written: int = 0
    items_written: int = 0
    items_skipped_duplicate: int = 0
    sources_skipped_unchanged: int = 0
    quarantined: int = 0
    quarantine: list[QuarantineEntry] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def classify(name: str, data: bytes) -> str:
    """'fhir' or 'dicom', or UploadError naming the upload (by position, not by its file name)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise UploadError(f"{name}: not valid JSON ({exc.__class__.__name__}: {str(exc)[:120]})") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            got = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
            raise UploadError(f"{name}: a FHIR upload must be one Bundle resource, got {got!r}")
        if not isinstance(doc.get("entry", []), list):
            raise UploadError(f"{name}: Bundle.entry must be a list")
        return "fhir"
    if data[:2] == b"\x1f\x8b":
        raise UploadError(f"{name}: compressed uploads are not accepted; send the JSON Bundle itself", 415)
    raise UploadError(f"{name}: neither a FHIR Bundle (JSON) nor a DICOM Part 10 file (no 'DICM' at byte 128)", 415)


def stage(uploads: list[bytes], folder: Path) -> dict[str, list[Path]]:
    """Check every upload, then write them as upload-N.json / upload-N.dcm; nothing is written on a bad one."""
    kinds = [classify(f"upload {i}", data) for i, data in enumerate(uploads, 1)]
    out: dict[str, list[Path]] = {"fhir": [], "dicom": []}
    for i, (kind, data) in enumerate(zip(kinds, uploads), 1):
        path = folder / f"upload-{i}.{'json' if kind == 'fhir' else 'dcm'}"
        path.write_bytes(data)
        out[kind].append(path)
    return out


def _link_or_copy(src: str, dst: str) -> None:
    if Path(src).suffix in LINKABLE:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _subjects(cohort: Path) -> set[str]:
    from biomm.store.cohort import Cohort

    with Cohort(cohort, create=False, read_only=True) as c:
        return set(c.subjects())


def _merge(report: dict[str, Any], summary: IngestSummary) -> None:
    for key in ("subjects_added", "records_written", "items_written", "items_skipped_duplicate",
                "sources_skipped_unchanged", "quarantined"):
        report[key] += getattr(summary, key)
    report["quarantine"] += [q.model_copy(update={"source": Path(q.source).name}) for q in summary.quarantine]
    report["warnings"] += summary.warnings


def ingest_uploads(state: ServeState, uploads: list[bytes]) -> IngestReport:
    """Stage, ingest into a copy, swap it in and refresh the engine; the cohort is unchanged on failure."""
    from biomm.ingest.ehr import fhir
    from biomm.ingest.imaging import dicom

    if not uploads:
        raise UploadError("no files: send a FHIR Bundle as JSON, or files as multipart field 'files'")
    if len(uploads) > state.config.max_ingest_files:
        raise UploadError(f"{len(uploads)} files; at most {state.config.max_ingest_files} per request", 413)
    t0 = time.perf_counter()
    live = state.cohort_dir
    with tempfile.TemporaryDirectory(prefix="biomm-upload-") as up:
        files = stage(uploads, Path(up))
        with state.ingest_mutex:
            work = Path(tempfile.mkdtemp(prefix=f".{live.name}.ingest-", dir=live.parent))
            try:
                copy = work / live.name
                with state.swap.read():
                    shutil.copytree(live, copy, copy_function=_link_or_copy)
                before = _subjects(copy)
                report: dict[str, Any] = {k: 0 for k in ("subjects_added", "records_written", "items_written",
                                                         "items_skipped_duplicate", "sources_skipped_unchanged",
                                                         "quarantined")}
                report.update(quarantine=[], warnings=[])
                if files["fhir"]:
                    _merge(report, fhir.ingest(files["fhir"], copy, state.config.fhir_ingest, progress=False))
                if files["dicom"]:
                    _merge(report, dicom.ingest(files["dicom"], copy, state.config.dicom_ingest, progress=False))
                new = sorted(_subjects(copy) - before)
                _swap(state, live, copy, work / "previous")
            finally:
                shutil.rmtree(work, ignore_errors=True)
    still = sum(q.reason.startswith("still quarantined") for q in report["quarantine"])  # skipped, but bad
    wrote = report["records_written"] or report["items_written"] or report["sources_skipped_unchanged"] - still
    status = "ingested" if not report["quarantined"] else ("partial" if wrote else "quarantined")
    out = IngestReport(status=status, files={k: len(v) for k, v in files.items() if v}, new_subjects=new,
                       seconds=round(time.perf_counter() - t0, 3), **report)
    log.info("ingest: %d file(s), %d new subject(s), %d record(s), %d quarantined",
             len(uploads), len(new), out.records_written, out.quarantined)
    return out


def _swap(state: ServeState, live: Path, copy: Path, previous: Path) -> None:
    """Two renames under the exclusive lock, then engine.refresh(); rolled back if the refresh fails."""
    with state.swap.write():
        os.rename(live, previous)
        os.rename(copy, live)
        try:
            if state.engine_loaded:
                state.engine.refresh()
        except Exception:
            os.rename(live, copy)
            os.rename(previous, live)
            if state.engine_loaded:
                state.engine.refresh()
            raise
