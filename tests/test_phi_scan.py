"""Done-when scan of issue 18: a cohort built from planted-PHI inputs (FHIR names in file names and
narratives, DICOM names in every attribute of PS3.15 Table E.1-1 and in private tags) holds none of
the planted strings in any file outside its quarantine, and the console and --json summaries name
sources by checksum label only."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from tests.ingest.imaging.dicom_fixtures import copy_as_new_series, dicom_file
from tests.ingest.imaging.test_deid import NAME, UID, planted

BUNDLE = "Addie_Tremblay_4c875c3c-b4d6-4f6d-aabe-5ddc24892adc.json.gz"
PLANTED = (NAME, "Zyxwvut", "Plantedprac", "Addie", "Tremblay")
FAST = ["--set", "workers=1", "--set", "preprocess.spatial_size_2d=[16,16]"]


def _fhir(data_dir: Path, folder: Path) -> None:
    """The bundle with the patient renamed to the planted name, the name in every narrative and in a
    practitioner; written under a file name holding it; plus a bad file named after the patient."""
    doc = json.loads(gzip.open(data_dir / "synthea" / BUNDLE).read())
    for entry in doc["entry"]:
        res = entry["resource"]
        res["text"] = {"status": "generated",
                       "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">Patient {NAME} Zyxwvut, seen by Plantedprac</div>"}
        if res["resourceType"] == "Patient":
            res["name"] = [{"use": "official", "family": NAME, "given": ["Zyxwvut"]}]
        if res["resourceType"] == "Practitioner":
            res["name"] = [{"family": "Plantedprac", "given": ["Dr"]}]
    folder.mkdir(parents=True)
    (folder / f"{NAME}_Zyxwvut_[p2].json").write_text(json.dumps(doc))
    (folder / f"{NAME}_broken.json").write_text('{"resourceType": "Bundle", "entry": [')


def _dicom(folder: Path) -> None:
    src = copy_as_new_series(dicom_file("CT_small.dcm"), folder / f"{NAME}_ct.dcm")
    ds = planted(pydicom.dcmread(src))
    for tag in [t for t in ds.keys() if t.group == 0]:
        del ds[tag]
    ds.save_as(src)


def test_no_planted_phi_outside_the_quarantine(tmp_path, data_dir):
    from biomm.cli import app

    _fhir(data_dir, tmp_path / "fhir")
    _dicom(tmp_path / "dicom")
    cohort = tmp_path / "cohort"
    runner = CliRunner()
    outputs = []
    for args in (["ingest", "fhir", str(tmp_path / "fhir")], ["ingest", "dicom", str(tmp_path / "dicom"), *FAST]):
        for extra in ([], ["--json"]):
            res = runner.invoke(app, [*args, "--cohort", str(cohort), *extra])
            assert res.exit_code in (0, 3), res.output
            outputs.append(res.output)
    assert "[p2]" not in "".join(outputs)  # the file name itself is never printed (rich markup would eat it)
    for planted_text in PLANTED:
        for out in outputs:
            assert planted_text.lower() not in out.lower(), (planted_text, out)
    assert any("sha256:" in out and "still quarantined" in out for out in outputs)  # re-run reports it again
    scanned = 0
    for f in cohort.rglob("*"):
        if f.is_file() and "quarantine" not in f.relative_to(cohort).parts:
            data = f.read_bytes().lower()
            scanned += 1
            for planted_text in PLANTED:
                assert planted_text.lower().encode() not in data, (planted_text, f)
            assert UID.encode() not in data, f
    assert scanned >= 5
    info = runner.invoke(app, ["cohort", "info", str(cohort), "--json"])
    for planted_text in PLANTED:
        assert planted_text.lower() not in info.output.lower()
