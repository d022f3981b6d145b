"""De-identify DICOM headers: PS3.15 basic profile by dicognito, with the cohort's keyed mappings.

dicognito decides *which* attributes are identifying (names, ids, addresses, dates, UIDs, ...) and
replaces them. Its own UID and date replacements are random per run, so every UID it touched is
re-mapped with `Deidentifier.uid(original)` (consistent with FHIR ingest, so the ImagingStudy link
holds), every date it touched is the original shifted by the patient's FHIR offset, and times of day
are kept (as FHIR ingest keeps them). Patient name and id become the cohort's pseudonym."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from biomm.store.deid import Deidentifier

METHOD = "biomm: DICOM PS3.15 basic profile (dicognito), keyed UID remap, per-patient date shift"
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def _shift_da(value: str, days: int) -> str:
    try:
        return (datetime.strptime(value[:8], "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return ""


def _shift_dt(value: str, days: int) -> str:
    return _shift_da(value[:8], days) + value[8:] if len(value) >= 8 and _shift_da(value[:8], days) else ""


def _map(value: Any, fn) -> Any:
    if isinstance(value, (list, MultiValue)):
        return [fn(str(v)) for v in value]
    return fn(str(value)) if value not in (None, "") else value


_MAPPED_VRS = ("UI", "DA", "DT", "TM")


def _snapshot(ds: Dataset, out: dict | None = None) -> dict:
    """Values of UID/date/time elements keyed by (dataset object, tag); dicognito edits datasets in place,
    so this is all `_restore` needs (cheaper than a deep copy of the header)."""
    out = {} if out is None else out
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _snapshot(item, out)
        elif elem.VR in _MAPPED_VRS:
            out[(id(ds), elem.tag)] = copy.copy(elem.value)
    return out


def _restore(ds: Dataset, before: dict, deid: Deidentifier, shift: int) -> None:
    """Where dicognito changed a UID/date/time, apply the cohort's mapping to the original value instead."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _restore(item, before, deid, shift)
            continue
        key = (id(ds), elem.tag)
        if key not in before or elem.value == before[key]:
            continue
        orig = before[key]
        if elem.VR == "UI":
            elem.value = _map(orig, deid.uid)
        elif elem.VR == "DA":
            elem.value = _map(orig, lambda v: _shift_da(v, shift))
        elif elem.VR == "DT":
            elem.value = _map(orig, lambda v: _shift_dt(v, shift))
        elif elem.VR == "TM":
            elem.value = orig


def deidentify(ds: Dataset, deid: Deidentifier, subject_id: str, shift_days: int) -> Dataset:
    """De-identify `ds` in place (header only; pixel data untouched) and return it."""
    if not deid.enabled:
        return ds
    pixels = {k: ds[k] for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds}
    for k in pixels:
        del ds[k]
    before = _snapshot(ds)
    Anonymizer(seed=deid.token("dicognito", "seed")).anonymize(ds)  # seeded, deterministic; ~20 us to make
    _restore(ds, before, deid, shift_days)
    ds.remove_private_tags()
    ds.PatientName = subject_id
    ds.PatientID = subject_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, elem in pixels.items():
        ds[elem.tag] = elem
    return ds


def burned_in(ds: Dataset) -> bool:
    """Whether the header says the pixels carry burned-in annotation (text that may identify the patient)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def header_json(ds: Dataset) -> dict:
    """DICOM JSON of the (already de-identified) header, without pixel data, bulk binaries or private tags."""
    slim = Dataset()
    for elem in ds:
        if elem.tag.is_private or elem.keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            continue
        if elem.VR in _BULK_VRS and elem.value is not None and len(elem.value) > 1024:
            continue
        slim.add(elem)
    try:
        return slim.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda e: "")
    except Exception:  # a malformed value must not stop ingest: keep what serialises
        out = {}
        for elem in slim:
            one = Dataset()
            one.add(elem)
            try:
                out.update(one.to_json_dict())
            except Exception:
                continue
        return out
