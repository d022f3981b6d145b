"""The demo linkage: Synthea thoracic ImagingStudies + real PneumoniaMNIST X-rays as DICOM, linked on ingest."""
from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime

import numpy as np
import pydicom
import pytest

from biomm.ingest.demo.xrays import make_linked_xrays, respiratory_evidence, thoracic_studies
from biomm.ingest.imaging import dicom
from biomm.ingest.imaging.summary import summary as imaging_summary
from biomm.store.cohort import Cohort

from .dicom_fixtures import FAST, stored_text


@pytest.fixture(scope="module")
def xrays(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("xrays")
    return make_linked_xrays(data_dir / "synthea", data_dir / "pneumoniamnist.npz", out, seed=0)


def expected_counts(data_dir):
    """(studies, patients, instances) over the shipped bundles, counted independently of the writer."""
    studies = patients = instances = 0
    for f in sorted((data_dir / "synthea").glob("*.json.gz")):
        _, found, _ = thoracic_studies(json.loads(gzip.open(f).read()))
        studies += len(found)
        patients += bool(found)
        instances += sum(len(se.get("instance", [])) for st in found for se in st["series"])
    return studies, patients, instances


def test_one_valid_instance_per_thoracic_study(xrays, data_dir):
    studies, patients, instances = expected_counts(data_dir)
    assert studies >= 56 and (xrays["studies"], xrays["patients"], xrays["files"]) == (studies, patients, instances)
    rows = list(csv.DictReader(open(xrays["manifest"])))
    images = np.load(data_dir / "pneumoniamnist.npz")
    for row in rows[:10]:
        ds = pydicom.dcmread(f"{xrays['out_dir']}/{row['file']}")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert (ds.StudyInstanceUID, ds.PatientID, ds.Modality) == (row["study_uid"], row["patient_id"], row["modality"])
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        np.testing.assert_array_equal(ds.pixel_array, images["train_images"][int(row["source_index"])])
        assert int(images["train_labels"].reshape(-1)[int(row["source_index"])]) == int(row["label"])


def test_seeded_and_class_follows_conditions(xrays, tmp_path, data_dir):
    again = make_linked_xrays(data_dir / "synthea", data_dir / "pneumoniamnist.npz", tmp_path, seed=0)
    assert open(again["manifest"]).read() == open(xrays["manifest"]).read()
    rows = list(csv.DictReader(open(xrays["manifest"])))
    # the class is a seeded draw whose probability rises with the record before the study (issue 12)
    assert all(float(r["p_pneumonia"]) >= 0.2 + 0.45 * bool(r["evidence"]) - 1e-9 for r in rows)
    studies = {r["study_uid"]: r["label"] for r in rows}
    assert 10 <= sum(int(v) for v in studies.values()) < len(studies)
    when = datetime(2020, 1, 10)
    cond = {"code": {"coding": [{"code": "233604007"}]}, "onsetDateTime": "2020-01-01T00:00:00Z"}
    assert respiratory_evidence([cond], when) == ["233604007"]
    assert respiratory_evidence([cond | {"onsetDateTime": "2019-10-01T00:00:00Z",
                                         "abatementDateTime": "2019-10-20T00:00:00Z"}], when) == []


def test_fhir_then_dicom_links_every_series(xrays, tmp_path, data_dir):
    from biomm.ingest.ehr import fhir

    cohort = tmp_path / "cohort"
    fhir.ingest([data_dir / "synthea"], cohort)
    s = dicom.ingest([xrays["out_dir"]], cohort, FAST)
    n = xrays["files"]
    assert s.records_written == n and s.subjects_added == 0  # every X-ray found its FHIR patient
    with Cohort(cohort) as c:
        summary = imaging_summary(c)
    assert summary["linked_series"] == n and summary["unlinked_series"] == 0
    text = stored_text(cohort / "imaging")
    for row in list(csv.DictReader(open(xrays["manifest"])))[:5]:
        assert row["patient_id"] not in text and row["study_uid"] not in text
    assert summary["by_body_part"] == {"CHEST": n}
