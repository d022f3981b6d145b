"""De-identify DICOM headers: the PS3.15 basic profile (Annex E, Table E.1-1), with the cohort's keyed mappings.

Two passes. dicognito first replaces names, ids, addresses, equipment, UIDs and dates; its own UID and
date replacements are random per run, so every UID it touched is re-mapped with
`Deidentifier.uid(original)` (consistent with FHIR ingest, so the ImagingStudy link holds), every date
it touched is the original shifted by the patient's FHIR offset, and times of day are kept (as FHIR
ingest keeps them): the "Retain Longitudinal Temporal Information with Modified Dates" option.
Then the actions of Table E.1-1 (`biomm.ingest.imaging.ps315`) are applied to every attribute it lists,
inside sequences too: X removes, Z empties, D puts a dummy value (an empty sequence for SQ), U keeps the
keyed UID, and free text that dicognito leaves (StudyDescription, SeriesDescription, ImageComments,
ProtocolName, AdditionalPatientHistory, ...) is removed, or cleaned under the Clean Descriptors option.
Private elements are removed (numeric ones kept under the Retain Safe Private option). Patient name and
id become the cohort's pseudonym."""
from __future__ import annotations

import copy
import re
from datetime import datetime, timedelta
from typing import Any

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from biomm.ingest.imaging.config import DicomProfileConfig
from biomm.ingest.imaging.ps315 import CLEAN_DESCRIPTORS, action_for, basic_action
from biomm.store.deid import Deidentifier

# De-identification Method (0012,0063) is LO, at most 64 characters a value: the description is multi-valued
METHOD = ("biomm: DICOM PS3.15 basic profile (Table E.1-1; dicognito)", "keyed UID remap", "per-patient date shift")
# De-identification Method Code Sequence (0012,0064): PS3.16 CID 7050 codes of the profile and its options
_METHOD_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
                 "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
                 "clean descriptors": ("113105", "Clean Descriptors Option"),
                 "retain safe private": ("113111", "Retain Safe Private Option")}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "SV", "UV", "AT"}
_TEXT_VRS = {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_ID_VRS = {"PN", "LO", "SH", "UC", "AE"}  # where names, ids and addresses live
_DUMMY = {"PN": "ANONYMOUS", "AS": "000Y", "UR": "http://anonymized.invalid", "DS": "0", "IS": "0"}
_PATIENT_BIRTH_DATE = 0x00100030
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


def _identifying_words(ds: Dataset, out: set[str] | None = None) -> set[str]:
    """Words (3+ characters) of the names, ids and addresses of `ds` (sequences included), before any change:
    what cleaning removes from free text."""
    out = set() if out is None else out
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _identifying_words(item, out)
            continue
        listed = action_for(int(elem.tag))
        if elem.VR not in _ID_VRS or elem.value in (None, "") or f"{int(elem.tag):08X}" in CLEAN_DESCRIPTORS:
            continue
        if elem.VR != "PN" and listed is None and not elem.tag.is_private:
            continue
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for v in values:
            out.update(w for w in re.split(r"[\s^,;:/\\()\[\].=_-]+", str(v)) if len(w) >= 3)
    return out


class _Cleaner:
    """The C action: free text with the header's identifying words and every run of 4+ digits replaced."""

    def __init__(self, words: set[str]):
        ordered = sorted(words, key=len, reverse=True)
        self.words = re.compile(r"\b(" + "|".join(map(re.escape, ordered)) + r")\b", re.I) if ordered else None
        self.digits = re.compile(r"\d{4,}")

    def __call__(self, value: Any) -> Any:
        def one(text: str) -> str:
            text = self.words.sub("***", text) if self.words else text
            return self.digits.sub("***", text)

        if isinstance(value, (list, MultiValue)):
            return [one(str(v)) for v in value]
        return one(str(value)) if value not in (None, "") else value


def _dummy(elem) -> Any:
    if elem.VR in _NUMERIC_VRS - {"DS", "IS", "AT"}:
        return 0
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b"\x00\x00"
    if elem.VR == "AT":
        return None
    return _DUMMY.get(elem.VR, "ANONYMIZED")


def _safe_private(elem) -> bool:
    """A private element the Retain Safe Private option keeps: numeric, and not named as a date, time or id
    in pydicom's private dictionaries (vendors keep timestamps as numbers)."""
    if elem.VR not in _NUMERIC_VRS - {"AT"}:
        return False
    name = str(elem.name).lower()
    return not re.search(r"date|time|stamp|\buid\b|\bid\b|serial|number", name)


def apply_profile(ds: Dataset, options: DicomProfileConfig, clean: _Cleaner, deid: Deidentifier,
                  before: dict, shift: int) -> None:
    """Apply the Table E.1-1 action to every listed attribute of `ds` (recursively) and drop private elements.

    Listed dates are shifted by `shift` days and times kept (by `_restore` where dicognito changed them,
    here where it did not) unless their action is X (PatientBirthDate is emptied); UIDs that dicognito
    left are mapped here too. `before` is the `_snapshot` taken before dicognito ran."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private:
            if not (options.retain_safe_private and (tag.is_private_creator or _safe_private(elem))):
                del ds[tag]
            continue
        code = action_for(int(tag))
        if code is None:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    apply_profile(item, options, clean, deid, before, shift)
            continue
        action = basic_action(code)
        if options.clean_descriptors and f"{int(tag):08X}" in CLEAN_DESCRIPTORS and elem.VR in _TEXT_VRS:
            elem.value = clean(elem.value)
            continue
        if elem.VR in ("DA", "DT", "TM") and action != "X" and int(tag) != _PATIENT_BIRTH_DATE:
            if elem.VR != "TM" and elem.value not in (None, "") and before.get((id(ds), tag)) == elem.value:
                elem.value = _map(elem.value, (lambda v: _shift_da(v, shift)) if elem.VR == "DA"
                                  else (lambda v: _shift_dt(v, shift)))  # a date dicognito left
            continue
        if action in ("U", "K") or (action == "D" and elem.VR == "UI"):
            if elem.VR == "SQ":
                for item in elem.value or []:
                    apply_profile(item, options, clean, deid, before, shift)
            elif elem.VR == "UI" and elem.value not in (None, "") and before.get((id(ds), tag)) == elem.value:
                elem.value = _map(elem.value, deid.uid)
            continue
        if action == "X":
            del ds[tag]
        elif elem.VR == "SQ":  # Z, and D (a dummy sequence would be empty items): an empty sequence
            elem.value = []
        elif action == "Z":
            elem.value = None
        else:
            elem.value = _dummy(elem)


def _code(value: str, meaning: str) -> Dataset:
    """One DCM code item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def deidentify(ds: Dataset, deid: Deidentifier, subject_id: str, shift_days: int,
               options: DicomProfileConfig | None = None) -> Dataset:
    """De-identify `ds` in place (header only; pixel data untouched) and return it; `options` are the
    profile options (Clean Descriptors, Retain Safe Private), none by default."""
    if not deid.enabled:
        return ds
    options = options or DicomProfileConfig()
    pixels = {k: ds[k] for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds}
    for k in pixels:
        del ds[k]
    clean = _Cleaner(_identifying_words(ds)) if options.clean_descriptors else _Cleaner(set())
    before = _snapshot(ds)
    Anonymizer(seed=deid.token("dicognito", "seed")).anonymize(ds)  # seeded, deterministic; ~20 us to make
    _restore(ds, before, deid, shift_days)
    apply_profile(ds, options, clean, deid, before, shift_days)
    ds.PatientName = subject_id
    ds.PatientID = subject_id
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    chosen = [name for name, on in (("clean descriptors", options.clean_descriptors),
                                    ("retain safe private", options.retain_safe_private)) if on]
    ds.DeidentificationMethod = list(METHOD) + chosen
    ds.DeidentificationMethodCodeSequence = [_code(*_METHOD_CODES[k]) for k in ("basic", "dates", *chosen)]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, elem in pixels.items():
        ds[elem.tag] = elem
    return ds


def burned_in(ds: Dataset) -> bool:
    """Whether the header says the pixels carry burned-in annotation (text that may identify the patient)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def header_json(ds: Dataset, keep_private: bool = False) -> dict:
    """DICOM JSON of the (already de-identified) header, without pixel data, bulk binaries or (unless
    `keep_private`, the Retain Safe Private option) private tags."""
    slim = Dataset()
    for elem in ds:
        if (elem.tag.is_private and not keep_private) or elem.keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
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
