"""Pull studies from a PACS over DICOMweb (QIDO-RS to find, WADO-RS to retrieve) with dicomweb-client,
then run them through the same series pipeline as files."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

from biomm.ingest.base import IngestSummary
from biomm.ingest.dicom import ingest_files, open_cohort, resolve_config
from biomm.ingest.dicom_preprocess import DicomIngestConfig

STUDY_UID_TAG = "0020000D"
SERIES_UID_TAG = "0020000E"


def _uids(results: list[dict], tag: str) -> list[str]:
    return [r[tag]["Value"][0] for r in results if r.get(tag, {}).get("Value")]


def find_studies(client, studies: Iterable[str] | None = None) -> list[str]:
    """StudyInstanceUIDs to pull: the ones asked for, else every study QIDO-RS lists (paged)."""
    if studies:
        return list(studies)
    found, offset = [], 0
    while True:
        page = client.search_for_studies(offset=offset, limit=100)
        found.extend(_uids(page, STUDY_UID_TAG))
        if len(page) < 100:
            return found
        offset += len(page)


def download_study(client, base_url: str, study_uid: str, folder: Path) -> list[tuple[Path, str]]:
    """WADO-RS retrieve every series of a study into `folder`; (file, URL label) pairs."""
    out = []
    for series_uid in _uids(client.search_for_series(study_uid), SERIES_UID_TAG):
        for ds in client.retrieve_series(study_uid, series_uid):
            sop = str(ds.SOPInstanceUID)
            path = folder / f"{len(out):06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append((path, f"{base_url.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop}"))
    return out


def ingest_dicomweb(
    url: str,
    cohort: str | Path,
    studies: Iterable[str] | None = None,
    config: DicomIngestConfig | str | Path | dict | None = None,
    overrides: list[str] | None = None,
    *,
    deid: bool | None = None,
    deid_key: str | None = None,
    show_progress: bool = False,
    client=None,
) -> IngestSummary:
    """Ingest studies from the DICOMweb service at `url` (e.g. http://host:8042/dicom-web)."""
    from dicomweb_client.api import DICOMwebClient

    cfg = resolve_config(config, overrides)
    client = client or DICOMwebClient(url=url)
    with tempfile.TemporaryDirectory(prefix="biomm-dicomweb-") as tmp, open_cohort(cohort, cfg, deid, deid_key) as c:
        files: list[tuple[Path, str]] = []
        for i, study in enumerate(find_studies(client, studies)):
            folder = Path(tmp) / f"study{i:04d}"
            folder.mkdir()
            files.extend(download_study(client, url, study, folder))
        return ingest_files(c, files, cfg, show_progress=show_progress)
