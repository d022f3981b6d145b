"""PS3.15 Table E.1-1 on real pydicom test files: a planted name in every attribute of the table (and in
private tags, overlays and sequences) is gone after de-identification, and after ingest from every file."""
from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, dictionary_has_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from biomm.ingest.imaging import dicom
from biomm.ingest.imaging.config import DicomProfileConfig
from biomm.ingest.imaging.deid import deidentify, header_json
from biomm.ingest.imaging.ps315 import CLEAN_DESCRIPTORS, TABLE, basic_action
from biomm.store.deid import Deidentifier

from .dicom_fixtures import FAST, copy_as_new_series, dicom_file

NAME = "Plantedname"
UID = "1.2.999.424242"


def _value(vr: str):
    """A planted value for one VR: the name where text fits, a marker number, a planted UID or date."""
    vr = vr.split(" or ")[0]
    if vr in ("PN",):
        return f"{NAME}^Jane"
    if vr in ("LO", "LT", "ST", "UT", "UC", "SH"):
        return f"CT chest for {NAME} MRN-4711" if vr != "SH" else NAME
    if vr in ("CS", "AE"):
        return NAME.upper()
    if vr == "UR":
        return f"http://{NAME}.example"
    if vr == "AS":
        return "042Y"
    if vr == "UI":
        return UID
    if vr == "DA":
        return "19010203"
    if vr == "DT":
        return "19010203101112"
    if vr == "TM":
        return "101112"
    if vr in ("DS", "IS"):
        return "4242"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 4242
    if vr in ("FL", "FD"):
        return 4242.0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return (NAME + "\0").encode()
    if vr == "AT":
        return 0x00100010
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"{NAME}^Jane"
        item.CodeMeaning = NAME
        return Sequence([item])
    raise AssertionError(vr)


def _tags():
    """Every attribute of the table: listed tags, plus one concrete tag of each group range."""
    out = {}
    for key in TABLE:
        tag = int(key.replace("xxxxxx", "003000").replace("xx", "00"), 16)
        if dictionary_has_tag(tag) or "xx" in key:
            out[key] = tag
    return out


def planted(ds: Dataset) -> Dataset:
    """`ds` with the planted value in every attribute of the table, a private block and an overlay."""
    for key, tag in _tags().items():
        if key in ("FFFCFFFC", "FFFAFFFA") or tag in (0x00020003,):
            continue  # trailing padding / digital signatures: written specially; media UID lives in file meta
        vr = dictionary_VR(tag) if dictionary_has_tag(tag) else ("LT" if key.endswith("4000") else "OB")
        ds.add_new(tag, vr.split(" or ")[0], _value(vr))
    block = ds.private_block(0x0009, "PLANTED CREATOR", create=True)
    block.add_new(0x01, "LO", f"{NAME}^Private")
    block.add_new(0x02, "US", 7)
    return ds


def _text(obj) -> str:
    return json.dumps(header_json(obj, keep_private=True), default=str)


@pytest.fixture()
def ct():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    return planted(ds)


def test_every_table_attribute_loses_the_planted_name(ct):
    deid = Deidentifier(key=b"k" * 32)
    out = deidentify(ct, deid, "SUBJ1", 10)
    assert NAME.lower() not in _text(out).lower() and UID not in _text(out)
    checked = 0
    for key, tag in _tags().items():
        if "xx" in key or tag not in out:
            continue
        elem = out[tag]
        action = basic_action(TABLE[key])
        checked += 1
        assert action != "X" or tag in (0x00100010, 0x00100020), (key, action)
        if elem.VR in ("DA", "DT"):
            assert elem.value in (None, "") or not str(elem.value).startswith("19010203"), key
        elif elem.VR == "TM":
            continue  # times of day are kept (modified-dates option), never names
        elif elem.VR == "UI":
            assert elem.value != UID and str(elem.value).startswith("2.25."), key
        elif elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "DS", "IS"):
            assert elem.value in (None, "", 0, "0", 0.0) or float(elem.value) == 0, key
        elif elem.VR == "SQ":
            assert len(elem.value) == 0 or NAME not in str(elem.value), key
    assert checked > 40
    assert not any(e.tag.is_private for e in out)
    assert 0x60004000 not in out and 0x50003000 not in out
    assert str(out.PatientName) == "SUBJ1" and out.PatientIdentityRemoved == "YES"


def test_free_text_from_the_issue_is_removed(ct):
    ct.StudyDescription, ct.SeriesDescription = f"CT chest for {NAME}", f"{NAME} series"
    ct.ImageComments = f"Patient {NAME}, MRN-0099"
    out = deidentify(ct, Deidentifier(key=b"k" * 32), "S", 0)
    for kw in ("StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName", "AdditionalPatientHistory",
               "RequestedProcedureDescription", "PerformedProcedureStepDescription", "AcquisitionComments",
               "DerivationDescription"):
        assert kw not in out, kw


def test_clean_descriptors_keeps_cleaned_text_and_retain_safe_private_keeps_numbers():
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    block = ct.private_block(0x0009, "PLANTED CREATOR", create=True)
    block.add_new(0x01, "LO", f"{NAME}^Private")
    block.add_new(0x02, "US", 7)
    ct.SeriesDescription = f"{NAME} series"
    ct.PatientName = f"{NAME}^Jane"
    ct.StudyDescription = f"CT chest for Jane {NAME}"
    ct.ImageComments = f"Patient {NAME}, MRN-0099123"
    opts = DicomProfileConfig(clean_descriptors=True, retain_safe_private=True)
    out = deidentify(ct, Deidentifier(key=b"k" * 32), "S", 0, opts)
    assert out.StudyDescription == "CT chest for *** ***"
    assert out.ImageComments == "Patient ***, MRN-***"
    assert "SeriesDescription" in out and NAME not in str(out.SeriesDescription)
    assert NAME.lower() not in _text(out).lower()
    kept = [e for e in out if e.tag.is_private]
    assert any(e.value == 7 for e in kept) and not any("time stamp" in e.name for e in kept)
    assert all(e.tag.is_private_creator or e.VR in ("US", "SS", "UL", "SL", "FL", "FD", "DS", "IS") for e in kept)
    assert all(f"{t:08X}" in TABLE for t in map(lambda k: int(k, 16), CLEAN_DESCRIPTORS))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_ingested_cohort_holds_no_planted_string(tmp_path, name):
    src = copy_as_new_series(dicom_file(name), tmp_path / "src" / f"{NAME}_{name}")
    ds = planted(pydicom.dcmread(src))
    for tag in [t for t in ds.keys() if t.group == 0]:  # command-set elements cannot be written to a file
        del ds[tag]
    ds.save_as(src)
    s = dicom.ingest([tmp_path / "src"], tmp_path / "cohort", FAST, progress=False)
    assert s.records_written == 1, s.quarantine
    for f in (tmp_path / "cohort").rglob("*"):
        if f.is_file() and "quarantine" not in f.parts:
            data = f.read_bytes().lower()
            assert NAME.lower().encode() not in data and UID.encode() not in data, f


def test_the_method_is_recorded_as_conformant_values_and_cid_7050_codes():
    """De-identification Method is LO (64 characters a value): multi-valued; the code sequence names the
    profile, the modified-dates option, and each chosen option."""
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    out = deidentify(ct, Deidentifier(key=b"k" * 32), "S", 0)
    assert all(len(v) <= 64 for v in out.DeidentificationMethod)
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert {i.CodingSchemeDesignator for i in out.DeidentificationMethodCodeSequence} == {"DCM"}
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    opts = DicomProfileConfig(clean_descriptors=True, retain_safe_private=True)
    out = deidentify(ct, Deidentifier(key=b"k" * 32), "S", 0, opts)
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113107", "113105", "113111"]
    assert "clean descriptors" in list(out.DeidentificationMethod)
    back = Dataset.from_json(json.dumps(header_json(out)))  # survives the stored DICOM JSON
    assert len(back.DeidentificationMethodCodeSequence) == 4
