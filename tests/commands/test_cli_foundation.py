"""The CLI as a user runs it: ingest fhir, cohort info, run a pipeline."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from biomm.cli import app

SYNTHEA = Path(__file__).resolve().parents[2] / "biomm" / "resources" / "data" / "synthea"
runner = CliRunner()


def test_ingest_then_info_json(tmp_path):
    files = [str(p) for p in sorted(SYNTHEA.glob("*.json.gz"))[:3]]
    cohort = tmp_path / "c"
    res = runner.invoke(app, ["ingest", "fhir", *files, "--cohort", str(cohort), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["subjects_added"] == 3
    res = runner.invoke(app, ["cohort", "info", str(cohort), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["subjects"] == 3 and info["deid"] is True
    assert info["ehr"]["events_per_code_system"]["LOINC"] > 0
    assert info["subjects_by_modality"]["ehr"] == 3 and info["subjects_by_modality"]["text"] >= 1  # CarePlan narratives
    res = runner.invoke(app, ["cohort", "info", str(cohort)])
    assert res.exit_code == 0 and "quarantine: 0" in res.stdout


def test_quarantine_sets_the_exit_code_and_names_the_source_by_checksum(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("[1, 2")
    res = runner.invoke(app, ["ingest", "fhir", str(bad), str(sorted(SYNTHEA.glob("*.json.gz"))[0]), "--cohort", str(tmp_path / "c")])
    assert res.exit_code == 3
    # file names may carry patient names: the source is named by its checksum label (issue 18)
    assert "broken.json" not in res.output and "sha256:" in res.output and "not JSON" in res.output


def test_bad_config_key_fails_before_work(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("stricct: true\n")
    res = runner.invoke(app, ["ingest", "fhir", str(SYNTHEA), "--cohort", str(tmp_path / "c"), "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown key 'stricct'" in res.output
    assert not (tmp_path / "c").exists()


def test_missing_cohort_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["cohort", "info", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no cohort" in res.output
