"""Issue 18 on the server: LIKE wildcards match themselves, images are not cached, no /docs page loads from a
CDN, the access log never records query strings, a warning without TLS beyond loopback, and a re-uploaded
quarantined file is reported as quarantined."""
from __future__ import annotations

import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from tests.serve.helpers import READER, TOKENS, WRITER, auth

BUNDLES = ["Addie_Tremblay_4c875c3c-b4d6-4f6d-aabe-5ddc24892adc.json.gz",
           "Adolph_Smith_0c6b1f3d-edb2-422b-a0af-a262fb90ed07.json.gz"]


@pytest.fixture(scope="module")
def small_client(tmp_path_factory, data_dir):
    """A served two-patient cohort with one X-ray; no model is loaded (cohort routes only)."""
    from biomm.ingest.ehr.fhir import ingest
    from biomm.ingest.imaging import dicom
    from biomm.serve import create_app
    from tests.ingest.imaging.dicom_fixtures import copy_as_new_series, dicom_file

    root = tmp_path_factory.mktemp("hardening")
    src = root / "src"
    src.mkdir()
    for name in BUNDLES:
        shutil.copy(data_dir / "synthea" / name, src / name)
    ingest([src], root / "cohort", progress=False)
    copy_as_new_series(dicom_file("CT_small.dcm"), root / "dcm" / "ct.dcm")
    dicom.ingest([root / "dcm"], root / "cohort", {"workers": 1, "preprocess": {"spatial_size_2d": [16, 16]}},
                 progress=False)
    app = create_app(root / "no-model", root / "cohort", TOKENS)
    with TestClient(app) as client:
        yield client


def test_like_wildcards_match_only_themselves(small_client):
    everyone = small_client.get("/subjects", headers=auth(READER)).json()
    assert everyone["total"] >= 2
    for q in ("%", "_", "\\", "%%"):
        r = small_client.get("/subjects", params={"q": q}, headers=auth(READER))
        assert r.status_code == 200 and r.json()["total"] == 0, q
    sid = everyone["subjects"][0]["subject_id"]
    assert small_client.get("/subjects", params={"q": sid[2:6]}, headers=auth(READER)).json()["total"] >= 1


def test_images_are_not_cached(small_client):
    subjects = small_client.get("/subjects", headers=auth(READER)).json()["subjects"]
    imaged = next(s["subject_id"] for s in subjects if "imaging" in s["modalities"])
    images = small_client.get(f"/subjects/{imaged}/images", headers=auth(READER)).json()
    r = small_client.get(f"/images/{images[0]['record_id']}.png", headers=auth(READER))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers.get_list("cache-control") == ["no-store"]


def test_no_swagger_page_from_a_cdn(small_client):
    assert small_client.get("/docs").status_code == 404
    assert small_client.get("/redoc").status_code == 404


def test_access_log_has_no_query_strings(small_client, caplog):
    with caplog.at_level(logging.INFO, logger="biomm.serve"):
        small_client.get("/subjects", params={"q": "Tremblay"}, headers=auth(READER))
    lines = [r.getMessage() for r in caplog.records if r.name == "biomm.serve"]
    assert any(line.startswith("GET /subjects 200") for line in lines), lines
    assert not any("Tremblay" in line or "?" in line or READER in line for line in lines)


def test_tls_warning_beyond_loopback():
    from biomm.commands.serve import tls_warning

    assert tls_warning("127.0.0.1", False) is None and tls_warning("0.0.0.0", True) is None
    assert "without TLS" in tls_warning("0.0.0.0", False) and "--ssl-certfile" in tls_warning("10.0.0.5", False)


def test_reuploaded_quarantined_file_stays_quarantined(small_client):
    bad = b'{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "o1"}}]}'
    first = small_client.post("/ingest", content=bad, headers={**auth(WRITER), "content-type": "application/json"})
    again = small_client.post("/ingest", content=bad, headers={**auth(WRITER), "content-type": "application/json"})
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["status"] == "quarantined"
    body = again.json()
    assert body["status"] == "quarantined" and body["quarantined"] == 1
    assert body["quarantine"][0]["reason"].startswith("still quarantined: ")
