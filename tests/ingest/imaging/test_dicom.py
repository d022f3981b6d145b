"""DICOM ingest on real test files: kinds of series, intensity, de-identification, bad input, idempotency, links."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from typer.testing import CliRunner

from biomm.ingest.imaging import dicom
from biomm.ingest.imaging.deid import header_json
from biomm.ingest.imaging.intensity import decode
from biomm.ingest.imaging.config import DicomIngestConfig
from biomm.ingest.imaging.summary import summary as imaging_summary
from biomm.store.image_cache import load_cached
from biomm.store.cohort import Cohort

from .dicom_fixtures import DICOMDIR_TESTS, FAST, PYDICOM_DATA, copy_as_new_series, make_series, stored_text, dicom_file


def records(cohort_dir):
    with Cohort(cohort_dir) as c:
        return [r | {"provenance": json.loads(r["provenance"])} for r in c.records("imaging")]


def one(tmp_path, name, config=None):
    src = copy_as_new_series(dicom_file(name), tmp_path / "src" / name)
    s = dicom.ingest([src], tmp_path / "cohort", config or FAST)
    return s, records(tmp_path / "cohort")


# ------------------------------------------------------------------ kinds of series
@pytest.mark.parametrize("name,modality,kind,channels", [
    ("CT_small.dcm", "CT", "image", 1),
    ("MR_small.dcm", "MR", "image", 1),
    ("emri_small.dcm", "MR", "multiframe", 1),     # multi-frame enhanced MR
    ("US1_UNCR.dcm", "US", "image", 3),            # RGB ultrasound
    ("OBXXXX1A_2frame.dcm", "US", "multiframe", 3),  # palette colour, 2 frames
    ("liver.dcm", "SEG", "multiframe", 1),          # segmentation, 1-bit frames
    ("rtdose.dcm", "RTDOSE", "multiframe", 1),      # GridFrameOffsetVector geometry
])
def test_series_kinds(tmp_path, name, modality, kind, channels):
    s, recs = one(tmp_path, name)
    assert s.quarantined == 0 and s.records_written == 1, s.quarantine
    p = recs[0]["provenance"]
    assert (p["dicom_modality"], p["kind"]) == (modality, kind)
    assert p["shape"][0] == channels and p["original_shape"][0] == channels
    cached = load_cached(tmp_path / "cohort" / recs[0]["path"])
    assert list(cached["image"].shape) == p["shape"] and cached["affine"].shape == (4, 4)
    assert cached["image"].dtype == np.float16 and 0.0 <= cached["image"].min() <= cached["image"].max() <= 1.0


def test_volume_from_dicomdir_series_is_sorted_by_position(tmp_path):
    folder = make_series(tmp_path / "series", n=6, spacing=3.0)
    s = dicom.ingest([folder], tmp_path / "cohort", FAST | {"preprocess": {"spatial_size_3d": None}})
    assert s.records_written == 1 and s.items_written == 6
    p = records(tmp_path / "cohort")[0]["provenance"]
    assert p["kind"] == "volume" and p["original_spacing"][2] == pytest.approx(3.0)
    img = load_cached(tmp_path / "cohort" / records(tmp_path / "cohort")[0]["path"])["image"]
    assert img.shape == (1, 128, 128, 6)


def test_dicomdir_is_expanded(tmp_path):
    s = dicom.ingest([DICOMDIR_TESTS / "DICOMDIR"], tmp_path / "cohort", FAST)
    assert s.records_written >= 5  # CR and MR single images, CT5N volume; localisers with mixed planes quarantined
    kinds = {r["provenance"]["kind"] for r in records(tmp_path / "cohort")}
    assert {"image", "volume"} <= kinds


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"])
def test_compressed_transfer_syntaxes_decode(tmp_path, name):
    s, recs = one(tmp_path, name)
    assert s.quarantined == 0 and s.records_written == 1, s.quarantine


def test_undecodable_compressed_file_is_quarantined_with_reason(tmp_path):
    s, _ = one(tmp_path, "JPEG-lossy.dcm")  # 12-bit JPEG Extended: no installed plugin decodes it
    assert s.quarantined == 1 and "cannot be decoded" in s.quarantine[0].reason


def test_compressed_matches_uncompressed(tmp_path):
    ref = decode(pydicom.dcmread(dicom_file("MR_small.dcm")), "ref")
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(decode(pydicom.dcmread(dicom_file(name)), name), ref)


@pytest.mark.skipif(PYDICOM_DATA is None, reason="pydicom-data not installed")
@pytest.mark.parametrize("name", ["MR2_J2KR.dcm", "693_J2KR.dcm", "MR2_J2KI.dcm", "JPEG-LL.dcm",
                                  "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_gdcm_decodes_first_and_as_pylibjpeg_does(name):
    from pydicom.pixels import get_decoder, pixel_array

    ds = pydicom.dcmread(PYDICOM_DATA / name)
    assert next(iter(get_decoder(ds.file_meta.TransferSyntaxUID)._available)) == "gdcm"  # what ds.pixel_array uses
    np.testing.assert_array_equal(pixel_array(ds, decoding_plugin="gdcm"), pixel_array(ds, decoding_plugin="pylibjpeg"))


# ------------------------------------------------------------------ intensity
def test_modality_lut_gives_hounsfield_units():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    hu = decode(ds, "ct")[0, ..., 0]
    raw = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(hu, raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_window_preset_and_monochrome1(tmp_path):
    s, recs = one(tmp_path, "CT_small.dcm", FAST | {"intensity": {"window": "lung"}})
    assert recs[0]["provenance"]["transforms"][0]["name"] == "ScaleIntensityRanged"
    assert recs[0]["provenance"]["transforms"][0]["a_min"] == -1350.0
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    mono2 = decode(ds, "m2")
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = decode(ds, "m1")
    np.testing.assert_allclose(mono1, mono2.max() + mono2.min() - mono2)


def test_voi_lut_applied_when_asked():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 600, 400
    out, raw = decode(ds, "voi", voi=True), decode(ds, "plain")
    assert np.all(out[raw <= 400] == out.min()) and np.all(out[raw >= 800] == out.max())
    inside = (raw > 420) & (raw < 780)
    assert inside.any() and np.all((out[inside] > out.min()) & (out[inside] < out.max()))


def test_config_rejects_unknown_keys_and_half_windows():
    from biomm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown key 'intensity.windw'"):
        load_config(DicomIngestConfig, {"intensity": {"windw": "lung"}})
    with pytest.raises(ConfigError, match="window_center"):
        load_config(DicomIngestConfig, {"intensity": {"window_center": 40}})


# ------------------------------------------------------------------ bad input
def _bad_inputs(folder):
    folder.mkdir(parents=True)
    (folder / "garbage.bin").write_text("not dicom at all")  # .txt/.csv sidecars are skipped by discovery
    shutil.copy(dicom_file("MR_truncated.dcm"), folder / "truncated.dcm")
    shutil.copy(dicom_file("rtplan.dcm"), folder / "no_pixels.dcm")
    copy_as_new_series(dicom_file("MR_small.dcm"), folder / "mpeg.dcm")
    ds = pydicom.dcmread(folder / "mpeg.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(folder / "mpeg.dcm", enforce_file_format=True)
    copy_as_new_series(dicom_file("CT_small.dcm"), folder / "zero.dcm", Rows=0)
    make_series(folder / "gap", positions=[[0, 0, z] for z in (0, 2.5, 5, 10, 12.5)])
    make_series(folder / "dup", positions=[[0, 0, z] for z in (0, 2.5, 2.5, 5)])
    mixed = make_series(folder / "mixed", n=3)
    ds = pydicom.dcmread(mixed / "slice001.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(mixed / "slice001.dcm")
    copy_as_new_series(dicom_file("CT_small.dcm"), folder / "good.dcm")
    return folder


EXPECTED_REASONS = ["not a DICOM file", "truncated pixel data", "missing pixel data", "unsupported transfer syntax",
                    "zero-size image", "gap or uneven slice spacing", "duplicated slice positions",
                    "mixed slice orientations"]


def test_each_bad_input_is_quarantined_with_reason_and_rest_ingested(tmp_path):
    src = _bad_inputs(tmp_path / "bad")
    s = dicom.ingest([src], tmp_path / "cohort", FAST)
    reasons = [q.reason for q in s.quarantine]
    for expected in EXPECTED_REASONS:
        assert any(expected in r for r in reasons), (expected, reasons)
    assert s.records_written == 1 and s.exit_code == 3
    assert all(q.source for q in s.quarantine)
    with Cohort(tmp_path / "cohort") as c:
        stored = c.quarantined()
    assert len(stored) >= 8 and all((tmp_path / "cohort" / q["stored_path"]).exists() for q in stored)


def test_a_series_uid_reused_across_studies_gives_one_record_per_study(tmp_path):
    shared = pydicom.uid.generate_uid()
    srcs = [copy_as_new_series(dicom_file("CT_small.dcm"), tmp_path / "src" / f"{i}.dcm", SeriesInstanceUID=shared)
            for i in range(2)]
    once = copy_as_new_series(dicom_file("MR_small.dcm"), tmp_path / "src" / "mr.dcm")
    s = dicom.ingest([*srcs, once], tmp_path / "cohort", FAST)
    assert s.records_written == 3 and s.quarantined == 0
    recs = records(tmp_path / "cohort")
    assert len({r["record_id"] for r in recs}) == 3
    with Cohort(tmp_path / "cohort") as c:  # a unique series keeps the plain keyed UID as its record id
        assert c.deid.uid(str(pydicom.dcmread(once).SeriesInstanceUID)) in {r["record_id"] for r in recs}


def test_rerun_is_idempotent(tmp_path):
    src = _bad_inputs(tmp_path / "bad")
    make_series(src / "good_series", n=4)
    first = dicom.ingest([src], tmp_path / "cohort", FAST)
    files_before = sorted(p.name for p in (tmp_path / "cohort" / "imaging").iterdir())
    again = dicom.ingest([src], tmp_path / "cohort", FAST)
    assert first.records_written == 2
    assert again.records_written == 0 and again.sources_skipped_unchanged == again.sources_seen
    assert again.quarantined and all(q.reason.startswith("still quarantined: ") for q in again.quarantine)
    assert sorted(p.name for p in (tmp_path / "cohort" / "imaging").iterdir()) == files_before
    assert len(records(tmp_path / "cohort")) == 2


def test_cli_exit_code_and_json(tmp_path):
    from biomm.cli import app

    src = _bad_inputs(tmp_path / "bad")
    res = CliRunner().invoke(app, ["ingest", "dicom", str(src), "--cohort", str(tmp_path / "c"), "--json",
                                   "--set", "workers=1", "--set", "preprocess.spatial_size_2d=[16,16]"])
    assert res.exit_code == 3, res.output
    assert json.loads(res.stdout)["records_written"] == 1


# ------------------------------------------------------------------ de-identification
def test_no_phi_in_stored_files(tmp_path):
    phi = ("Doe^Jane", "PID-12345", "19700101")
    make_series(tmp_path / "src" / "ser", n=3, patient=phi)
    ct = copy_as_new_series(dicom_file("CT_small.dcm"), tmp_path / "src" / "ct.dcm",
                            PatientName="Roe^Richard", PatientID="MRN-777", PatientBirthDate="19551224",
                            BurnedInAnnotation="YES")
    s = dicom.ingest([tmp_path / "src"], tmp_path / "cohort", FAST)
    assert s.records_written == 2 and any("BurnedInAnnotation" in w for w in s.warnings)
    text = stored_text(tmp_path / "cohort")
    for value in (*phi, "Roe^Richard", "MRN-777", "19551224", "Doe", "Richard"):
        assert value not in text, value
    src_uid = pydicom.dcmread(ct).StudyInstanceUID
    assert src_uid not in text
    with Cohort(tmp_path / "cohort") as c:
        dump = json.dumps([c.records(), c.con.execute("SELECT * FROM sources").fetchall(),
                           c.con.execute("SELECT * FROM subjects").fetchall()], default=str)
        sid = c.deid.subject_id("MRN-777")
        shift = c.deid.date_shift_days("MRN-777")
        rec = next(r for r in records(tmp_path / "cohort") if r["subject_id"] == sid)
        header = json.loads((tmp_path / "cohort" / rec["provenance"]["header"]).read_text())
        assert rec["record_id"] == c.deid.uid(pydicom.dcmread(ct).SeriesInstanceUID)
    for value in (*phi, "MRN-777", "Roe", "ct.dcm"):
        assert value not in dump
    assert rec["provenance"]["burned_in_annotation"] is True
    assert header["00100010"]["Value"][0]["Alphabetic"] == sid and header["00100020"]["Value"] == [sid]
    original = pydicom.dcmread(ct).StudyDate
    from datetime import datetime, timedelta
    expected = (datetime.strptime(original, "%Y%m%d") + timedelta(days=shift)).strftime("%Y%m%d")
    assert header["00080020"]["Value"] == [expected] and header["00120062"]["Value"] == ["YES"]


def test_no_deid_keeps_identifiers(tmp_path):
    s, recs = one(tmp_path, "CT_small.dcm", FAST | {"deid": {"enabled": False}})
    ds = pydicom.dcmread(tmp_path / "src" / "CT_small.dcm")
    assert recs[0]["record_id"] == ds.SeriesInstanceUID and recs[0]["subject_id"] == ds.PatientID


def test_header_json_drops_pixels_and_private_tags():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    out = header_json(ds)
    assert "7FE00010" not in out and not any(int(k[:4], 16) % 2 for k in out)


# ------------------------------------------------------------------ links to the EHR
def test_links_by_imaging_study_then_patient_id_else_new_subject(tmp_path):
    a = copy_as_new_series(dicom_file("CT_small.dcm"), tmp_path / "src" / "a.dcm", PatientID="fhir-a")
    b = copy_as_new_series(dicom_file("MR_small.dcm"), tmp_path / "src" / "b.dcm", PatientID="fhir-b")
    c_ = copy_as_new_series(dicom_file("CT_small.dcm"), tmp_path / "src" / "c.dcm", PatientID="other")
    with Cohort(tmp_path / "cohort") as c:
        # As FHIR ingest does: pseudonymised subjects and an ImagingStudy row with remapped UIDs.
        subject_a = c.deid.subject_id("fhir-a-patient")
        c.ensure_subject(subject_a, "patient", c.deid.date_shift_days("fhir-a-patient"), "fhir")
        ds = pydicom.dcmread(a)
        c.con.execute("INSERT INTO imaging_studies VALUES (?, ?, ?, NULL, 'CT', 'Chest')",
                      [c.deid.uid(ds.StudyInstanceUID), c.deid.uid(ds.SeriesInstanceUID), subject_a])
        subject_b = c.deid.subject_id("fhir-b")
        c.ensure_subject(subject_b, "patient", c.deid.date_shift_days("fhir-b"), "fhir")
    s = dicom.ingest([a, b, c_], tmp_path / "cohort", FAST)
    assert s.records_written == 3 and s.subjects_added == 1
    by_subject = {r["subject_id"]: r["provenance"]["linked_by"] for r in records(tmp_path / "cohort")}
    with Cohort(tmp_path / "cohort") as c:
        assert by_subject[subject_a] == "imaging_study" and by_subject[subject_b] == "patient_id"
        assert by_subject[c.deid.subject_id("other")] is None
        summary = imaging_summary(c)
    assert summary["linked_series"] == 2 and summary["unlinked_series"] == 1
    assert summary["by_modality"] == {"CT": 2, "MR": 1}


def test_pydicom_data_full_size_files_ingest(tmp_path):
    if PYDICOM_DATA is None:
        pytest.skip("pydicom-data is not installed")
    s, recs = one(tmp_path, "RG1_J2KR.dcm")  # 1955x1841 CR, MONOCHROME1, JPEG 2000
    assert s.records_written == 1 and recs[0]["provenance"]["photometric"] == "MONOCHROME1"


def test_a_run_owns_its_pool_and_builds_its_transforms_once(tmp_path, monkeypatch):
    from biomm.ingest.imaging import transforms
    from biomm.ingest.imaging.config import DicomIngestConfig

    built = []
    real = transforms.build_transforms
    monkeypatch.setattr(transforms, "build_transforms", lambda cfg, rank: built.append(rank) or real(cfg, rank))
    files = [copy_as_new_series(dicom_file(n), tmp_path / "src" / n) for n in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm")]
    cfg = DicomIngestConfig.model_validate(FAST | {"workers": 2})
    with Cohort(tmp_path / "cohort") as c, dicom.ImagingIngest(c, cfg, progress=False) as run:
        s = run.run(files)
        assert run._pool is not None  # two worker processes decoded the three series
    assert s.records_written == 3 and sorted(built) == [2, 3]  # one Compose per rank for the whole run
    assert run._pool is None  # closed with the run
