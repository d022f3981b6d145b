"""POST /ingest through the real app: a new Synthea patient becomes a queryable subject without a restart,
DICOM links or creates subjects (de-identified), bad input is refused or quarantined, and an ingest that
fails half-way or is refused leaves the cohort exactly as it was."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from tests.serve.conftest import copy_cohort
from tests.serve.helpers import FAST_DICOM, READER, TOKENS, WRITER, auth

W = auth(WRITER)


@pytest.fixture(scope="module")
def ingest_cohort(clinical_cohort, tmp_path_factory) -> Path:
    return copy_cohort(clinical_cohort, tmp_path_factory.mktemp("ingest") / "cohort")


@pytest.fixture(scope="module")
def ingest_app(serve_model, ingest_cohort):
    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    app = create_app(serve_model, ingest_cohort, TOKENS, ServeConfig(dicom_ingest=FAST_DICOM))
    with TestClient(app) as c:
        yield app, c


@pytest.fixture(scope="module")
def new_bundles(data_dir) -> list[Path]:
    """Synthea bundles the clinical cohort does not hold."""
    from tests.conftest import _thoracic_first

    used = set(_thoracic_first(37))
    return [f for f in sorted((data_dir / "synthea").glob("*.json.gz")) if f not in used][:3]


def _bundle(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _patient_names(raw: bytes) -> set[str]:
    names = set()
    for e in json.loads(raw)["entry"]:
        if e["resource"]["resourceType"] == "Patient":
            for n in e["resource"].get("name", []):
                names.update(x for x in [n.get("family"), *n.get("given", [])] if x and len(x) > 3)
    return names


def snapshot(cohort: Path) -> dict:
    files = {str(p.relative_to(cohort)): p.stat().st_size for p in sorted(cohort.rglob("*")) if p.is_file()}
    con = duckdb.connect(str(cohort / "cohort.duckdb"), read_only=True)
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("subjects", "records", "quarantine")}
    con.close()
    return {"files": files, "rows": rows}


def test_new_patient_becomes_queryable_without_restart(ingest_app, ingest_cohort, new_bundles):
    app, c = ingest_app
    raw = _bundle(new_bundles[0])
    n_before = c.get("/model", headers=auth(READER)).json()["subjects"]
    r = c.post("/ingest", headers={**W, "Content-Type": "application/json"}, content=raw)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "ingested" and report["files"] == {"fhir": 1} and report["quarantined"] == 0
    assert len(report["new_subjects"]) == 1 and report["subjects_added"] == 1 and report["items_written"] > 10
    sid = report["new_subjects"][0]
    assert sid in [s["subject_id"] for s in c.get("/subjects", headers=W, params={"limit": 1000}).json()["subjects"]]
    assert c.get("/model", headers=W).json()["subjects"] == n_before + 1
    detail = c.get(f"/subjects/{sid}", headers=W).json()
    assert detail["modalities"]["ehr"]["items"] > 10
    q = c.post("/query", headers=auth(READER), json={"kind": "similar", "subject": sid, "k": 3})
    assert q.status_code == 200, q.text
    assert len(q.json()["evidence"]["similar_subjects"]) == 3
    text = r.text + json.dumps(detail) + c.get(f"/subjects/{sid}/timeline", headers=W, params={"limit": 5000}).text
    assert not [n for n in _patient_names(raw) if n in text]
    again = c.post("/ingest", headers={**W, "Content-Type": "application/json"}, content=raw).json()
    assert again["new_subjects"] == [] and again["sources_skipped_unchanged"] == 1
    assert not list(ingest_cohort.parent.glob(".cohort.ingest-*"))  # no staging left behind


def _dicom_for_new_patient(clinical_cohort: Path, dst: Path) -> Path:
    src = sorted((clinical_cohort.parent / "xrays").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = "SERVE-TEST-77", "Quux^Serveworth", "19610203"
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_multipart_fhir_and_dicom(ingest_app, ingest_cohort, clinical_cohort, new_bundles, tmp_path):
    app, c = ingest_app
    dcm = _dicom_for_new_patient(clinical_cohort, tmp_path / "Quux_Serveworth.dcm")
    files = [("files", ("Smith_John.json", _bundle(new_bundles[1]), "application/json")),
             ("files", ("Quux_Serveworth.dcm", dcm.read_bytes(), "application/dicom"))]
    r = c.post("/ingest", headers=W, files=files)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["files"] == {"fhir": 1, "dicom": 1} and len(report["new_subjects"]) == 2
    imaged = [s for s in report["new_subjects"]
              if "imaging" in c.get(f"/subjects/{s}", headers=W).json()["modalities"]]
    assert len(imaged) == 1
    images = c.get(f"/subjects/{imaged[0]}/images", headers=W).json()
    png = c.get(f"/images/{images[0]['record_id']}.png", headers=W)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    stored = "".join(p.read_text(errors="ignore") for p in (ingest_cohort / "imaging").glob("*.json"))
    everything = r.text + stored + json.dumps(images) + json.dumps(snapshot(ingest_cohort)["files"])
    for secret in ("Serveworth", "SERVE-TEST-77", "19610203", "Smith_John", "Quux_Serveworth"):
        assert secret not in everything, secret


def test_bad_input_is_quarantined_like_the_cli(ingest_app):
    app, c = ingest_app
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01",
                                                "name": [{"family": "Quarantina"}]}},
        *({"fullUrl": f"urn:uuid:o{i}", "resource": {
            "resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": "urn:uuid:p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}} for i, when in enumerate(["not-a-date", "2020-01-01"]))]}
    r = c.post("/ingest", headers=W, json=bundle)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "partial" and report["quarantined"] == 1 and report["subjects_added"] == 1
    entry = report["quarantine"][0]
    assert entry["source"].startswith("sha256:") and entry["source"].endswith(".json") and entry["field"] == "effectiveDateTime" and "date" in entry["reason"]
    assert "Quarantina" not in r.text


@pytest.mark.parametrize("kwargs,status,reason", [
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, "not valid JSON"),
    ({"json": {"resourceType": "Patient", "id": "x"}}, 422, "one Bundle resource, got 'Patient'"),
    ({"json": [{"resourceType": "Bundle"}]}, 422, "got 'list'"),
    ({"json": {"resourceType": "Bundle", "entry": "nope"}}, 422, "Bundle.entry must be a list"),
    ({"files": [("files", ("a.json.gz", gzip.compress(b'{"resourceType": "Bundle"}'), "application/gzip"))]}, 415,
     "compressed"),
    ({"files": [("files", ("x.bin", b"\x00\x01 random bytes", "application/octet-stream"))]}, 415, "neither a FHIR"),
    ({"files": [("files", ("ok.json", b'{"resourceType": "Bundle", "entry": []}', "application/json")),
                ("files", ("bad.json", b'{"resourceType": "Observation"}', "application/json"))]}, 422, "upload 2"),
    ({"files": [("notes", ("n.txt", b"hello", "text/plain"))]}, 422, "no files: send"),
    ({"content": b"resourceType=Bundle", "headers": {"Content-Type": "text/plain"}}, 415, "send application/json"),
    ({"content": b"--xx\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 422, "no files"),
    ({"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400, "malformed multipart body: Missing boundary"),
])
def test_malformed_uploads_are_refused_and_change_nothing(ingest_app, ingest_cohort, kwargs, status, reason):
    app, c = ingest_app
    before = snapshot(ingest_cohort)
    headers = {**W, **kwargs.pop("headers", {})}
    r = c.post("/ingest", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert snapshot(ingest_cohort) == before


def test_failure_half_way_leaves_the_cohort_as_it_was(serve_model, ingest_cohort, clinical_cohort, new_bundles, tmp_path):
    """The FHIR part succeeds in the working copy, then the DICOM part fails (this config asks for an
    identified ingest into a de-identified cohort): 409, and not one byte of the served cohort changed."""
    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    cfg = ServeConfig(dicom_ingest={**FAST_DICOM, "deid": {"enabled": False}})
    before = snapshot(ingest_cohort)
    dcm = _dicom_for_new_patient(clinical_cohort, tmp_path / "x.dcm")
    with TestClient(create_app(serve_model, ingest_cohort, TOKENS, cfg)) as c:
        r = c.post("/ingest", headers=W, files=[("files", ("a.json", _bundle(new_bundles[2]), "application/json")),
                                                ("files", ("b.dcm", dcm.read_bytes(), "application/dicom"))])
    assert r.status_code == 409 and "de-identification" in r.json()["detail"]
    assert snapshot(ingest_cohort) == before
    assert not list(ingest_cohort.parent.glob(".cohort.ingest-*"))


def test_oversized_ingest_is_413(serve_model, ingest_cohort, new_bundles):
    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    before = snapshot(ingest_cohort)
    raw = _bundle(new_bundles[2])
    small = create_app(serve_model, ingest_cohort, TOKENS, ServeConfig(max_ingest_bytes=len(raw) - 1, max_ingest_files=2))
    with TestClient(small) as c:
        r = c.post("/ingest", headers={**W, "Content-Type": "application/json"}, content=raw)
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        tiny = ("files", ("a.json", b'{"resourceType": "Bundle", "entry": []}', "application/json"))
        r = c.post("/ingest", headers=W, files=[tiny, tiny, tiny])
        assert r.status_code == 413 and "at most 2" in r.json()["detail"]
    assert snapshot(ingest_cohort) == before
