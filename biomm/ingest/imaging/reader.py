"""Find DICOM instances (files, folders, DICOMDIR) and group them into series by SeriesInstanceUID.

Only headers are read here (pixel data deferred); decoding happens per series in `dicom_series`."""
from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from biomm.ingest.base import IngestError, unique_paths

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Instance:
    """One DICOM file as the pipeline sees it: where it is, how the store names it, and its checksum."""

    path: Path
    label: str
    checksum: str


@dataclass
class Header:
    """The few header fields that route an instance: series, study, patient, SOP class."""

    instance: Instance
    series_uid: str
    study_uid: str
    patient_id: str
    sop_instance_uid: str
    modality: str
    has_pixels: bool


@dataclass
class SeriesGroup:
    """The headers of one series (keyed by study and series UID), in first-seen order."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    headers: list[Header] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        """The series' instances, in header order."""
        return [h.instance for h in self.headers]


def is_dicomdir(path: Path) -> bool:
    """Whether `path` is a DICOMDIR index (by name or by its media storage SOP class)."""
    if path.name.upper().startswith("DICOMDIR"):
        return True
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def dicomdir_files(path: Path) -> list[Path]:
    """Files referenced by a DICOMDIR (pydicom's FileSet resolves the referenced file ids)."""
    from pydicom.fileset import FileSet

    fs = FileSet(pydicom.dcmread(path))
    return [Path(inst.path) for inst in fs if Path(inst.path).is_file()]


SIDECAR_SUFFIXES = (".csv", ".tsv", ".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".html", ".pdf", ".log",
                    ".ini", ".py", ".sh")


def discover(sources: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Files to read and DICOMDIR index files found: folders are walked recursively, DICOMDIRs expanded.

    DICOM files often have no suffix, so every file in a folder is a candidate; hidden files and known
    non-DICOM sidecars (`SIDECAR_SUFFIXES`: manifests, notes, CSV) are skipped. Files named explicitly are
    always read, so that bad input still reaches quarantine."""
    files: list[Path] = []
    dirs: list[Path] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"source not found: {p}")
        candidates = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and not f.name.lower().endswith(SIDECAR_SUFFIXES)) if p.is_dir() else [p]
        for f in candidates:
            if is_dicomdir(f):
                dirs.append(f)
                try:
                    files.extend(dicomdir_files(f))
                except Exception:  # a broken index: the files it names are still found by the folder walk
                    pass
            else:
                files.append(f)
    return unique_paths(files), dirs


# The routing fields, plus the pixel data elements (their presence only: the values stay deferred).
HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "PatientID", "SOPInstanceUID", "Modality",
               "PixelData", "FloatPixelData", "DoubleFloatPixelData"]


def read_header(inst: Instance, data: bytes | None = None) -> Header:
    """Read one header; IngestError (naming the store label, never the raw path) when it is not usable DICOM.

    `data`: the file's bytes when the caller already holds them (it hashed them), so the file is read once;
    only the routing tags are converted (`specific_tags`), large values are left unread."""
    try:
        src = BytesIO(data) if data is not None else inst.path
        ds = pydicom.dcmread(src, defer_size="2 KB", specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        raise IngestError(inst.label, "not a DICOM file (no DICM preamble or file meta)") from None
    except Exception as exc:
        raise IngestError(inst.label, f"unreadable DICOM header: {type(exc).__name__}") from None
    series = str(ds.get("SeriesInstanceUID", "") or "")
    if not series:
        raise IngestError(inst.label, "no SeriesInstanceUID", field="SeriesInstanceUID")
    return Header(
        instance=inst,
        series_uid=series,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or "OT"),
        has_pixels=any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
    )


def _rank(h: Header) -> tuple[int, str]:
    try:
        size = h.instance.path.stat().st_size
    except OSError:
        size = 0
    return size, h.instance.checksum


def group_series(headers: list[Header]) -> list[SeriesGroup]:
    """Series in first-seen order, keyed by (study, series) UID since some generators reuse series UIDs
    across studies; of instances repeated by SOPInstanceUID (the same instance twice) one is kept: the
    largest file (a truncated copy is smaller than its intact twin), ties by checksum, so the choice does
    not depend on the order files were found."""
    groups: dict[tuple[str, str], SeriesGroup] = {}
    where: dict[tuple[str, str, str], int] = {}  # (study, series, SOP UID) -> index in the group's headers
    for h in headers:
        key = (h.study_uid, h.series_uid)
        g = groups.setdefault(key, SeriesGroup(h.series_uid, h.study_uid, h.patient_id, h.modality))
        if h.sop_instance_uid:
            i = where.get((*key, h.sop_instance_uid))
            if i is not None:
                if _rank(h) > _rank(g.headers[i]):
                    g.headers[i] = h
                continue
            where[(*key, h.sop_instance_uid)] = len(g.headers)
        g.headers.append(h)
    return list(groups.values())
