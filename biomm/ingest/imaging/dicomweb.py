"""Pull studies from a PACS over DICOMweb (QIDO-RS to find, WADO-RS to retrieve) with dicomweb-client,
then run them through the same series pipeline as files (`dicom.ImagingIngest`)."""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Iterable

from biomm.ingest.base import IngestSummary, open_cohort, reader_config
from biomm.ingest.imaging.config import DicomIngestConfig
from biomm.ingest.imaging.dicom import ImagingIngest
from biomm.store.cohort import Cohort

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


def ingest(
    sources: Iterable[str],
    cohort: str | Path | Cohort,
    config: DicomIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest studies from DICOMweb services: `sources` are base URLs (e.g. http://host:8042/dicom-web); the
    config's `studies` selects StudyInstanceUIDs (default: every study each service lists)."""
    from dicomweb_client.api import DICOMwebClient

    cfg = reader_config(DicomIngestConfig, config)
    with tempfile.TemporaryDirectory(prefix="biomm-dicomweb-") as tmp, \
            open_cohort(cohort, cfg.deid, keep_setting=True) as c, ImagingIngest(c, cfg, progress=progress) as run:
        files: list[tuple[Path, str]] = []
        folders = (Path(tmp) / f"study{i:04d}" for i in itertools.count())
        for url in sources:
            client = DICOMwebClient(url=url)
            for study in find_studies(client, cfg.studies):
                folder = next(folders)
                folder.mkdir()
                files.extend(download_study(client, url, study, folder))
        return run.run(files)
