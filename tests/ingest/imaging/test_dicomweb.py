"""DICOMweb ingest against a real Orthanc on loopback (installed with apt-get by scripts/orthanc.sh).

Skipped, with the reason, where Orthanc cannot be installed or started; the other tests still run."""
from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest

from biomm.ingest.imaging import dicom, dicomweb
from biomm.store.cohort import Cohort

from .dicom_fixtures import FAST, copy_as_new_series, dicom_file, make_series

pytestmark = pytest.mark.orthanc
SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "orthanc.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """(DICOMweb URL, uploaded source folder) of a fresh Orthanc holding three series."""
    folder = tmp_path_factory.mktemp("orthanc")
    src = tmp_path_factory.mktemp("pacs_src")
    copy_as_new_series(dicom_file("CT_small.dcm"), src / "ct.dcm", PatientID="PACS-1", PatientName="Pacs^Patient")
    copy_as_new_series(dicom_file("MR_small.dcm"), src / "mr.dcm", PatientID="PACS-2")
    make_series(src / "vol", n=4, patient=("Vol^Patient", "PACS-3", "19800101"))
    port = free_port()
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start", str(folder), str(port)], capture_output=True, text=True,
                              timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"Orthanc could not be started: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"Orthanc could not be installed or started: {proc.stderr.strip()[-300:]}")
    base = proc.stdout.strip().splitlines()[-1]
    try:
        for f in sorted(p for p in src.rglob("*.dcm")):
            req = urllib.request.Request(f"{base}/instances", data=f.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert json.loads(resp.read())["Status"] in ("Success", "AlreadyStored")
        yield f"{base}/dicom-web", src
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)


def test_round_trip_matches_file_ingest(pacs, tmp_path):
    url, src = pacs
    s = dicomweb.ingest([url], tmp_path / "web", FAST)
    assert s.quarantined == 0 and s.records_written == 3 and s.items_written == 6
    keyed = FAST | {"deid": {"key": "k"}}
    files = dicom.ingest([src], tmp_path / "files", keyed)
    web = dicomweb.ingest([url], tmp_path / "web2", keyed)
    assert files.records_written == web.records_written == 3
    with Cohort(tmp_path / "files") as a, Cohort(tmp_path / "web2") as b:
        ra = {r["record_id"]: json.loads(r["provenance"]) for r in a.records("imaging")}
        rb = {r["record_id"]: json.loads(r["provenance"]) for r in b.records("imaging")}
    assert ra.keys() == rb.keys()  # same key -> same remapped UIDs through either path
    for k in ra:
        assert ra[k]["original_affine"] == rb[k]["original_affine"] and ra[k]["shape"] == rb[k]["shape"]


def test_selected_study_and_idempotent_rerun(pacs, tmp_path):
    url, src = pacs
    study = pydicom.dcmread(src / "ct.dcm").StudyInstanceUID
    first = dicomweb.ingest([url], tmp_path / "c", FAST | {"studies": [study]})
    again = dicomweb.ingest([url], tmp_path / "c", FAST | {"studies": [study]})
    assert first.records_written == 1 and again.records_written == 0
    assert again.sources_skipped_unchanged == again.sources_seen == 1


def test_cli_dicomweb(pacs, tmp_path):
    from typer.testing import CliRunner

    from biomm.cli import app

    url, _ = pacs
    res = CliRunner().invoke(app, ["ingest", "dicomweb", url, "--cohort", str(tmp_path / "c"), "--json",
                                   "--set", "workers=1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["records_written"] == 3
