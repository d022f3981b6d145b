"""Issue 18 on the command line: one-line errors with exit 2 (locked cohort, bad YAML, --cohort a file or a
foreign folder), the de-identification key off the command line, quarantined sources reported again,
bracketed text printed as is, library warnings behind --verbose, --version and flag help."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from biomm.cli import app

BUNDLE = "Addie_Tremblay_4c875c3c-b4d6-4f6d-aabe-5ddc24892adc.json.gz"


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture()
def one_bundle(tmp_path, data_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json.gz").write_bytes((data_dir / "synthea" / BUNDLE).read_bytes())
    return src


def test_second_ingest_waits_for_the_lock_then_fails_in_one_line(tmp_path, one_bundle):
    from biomm.store.cohort import Cohort

    Cohort(tmp_path / "c").close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(tmp_path / 'c' / 'cohort.duckdb')!r})
        print('held', flush=True)
        time.sleep(30)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        res = run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "c", env={"BIOMM_LOCK_TIMEOUT": "1.5"})
        waited = time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait()
    _one_line_error(res, "in use by another process", "BIOMM_LOCK_TIMEOUT")
    assert waited >= 1.5
    again = run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "c", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["subjects_added"] == 1


def test_malformed_yaml_and_bad_keys_name_the_file_and_line(tmp_path, one_bundle):
    bad = tmp_path / "bad.yaml"
    bad.write_text("strict: true\ndeid: [1, 2\nworkers: 1\n")
    _one_line_error(run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "c", "--config", bad),
                    str(bad), "line 3")
    keys = tmp_path / "keys.yaml"
    keys.write_text("strict: true\nbogus: 1\ndeid:\n  max_date_shift_days: -4\n")
    _one_line_error(run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "c", "--config", keys),
                    str(keys), "unknown key 'bogus' (line 2)", "deid.max_date_shift_days (line 4)")
    train = tmp_path / "train.yaml"
    train.write_text("data:\n  modalities: [ehr]\nnot_a_key: 3\n")
    _one_line_error(run("train", train, "--cohort", tmp_path / "c", "--out", tmp_path / "run"),
                    str(train), "unknown key 'not_a_key' (line 3)")


def test_cohort_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, one_bundle):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(run("ingest", "fhir", one_bundle, "--cohort", afile), "is a file")
    _one_line_error(run("cohort", "info", afile), "is a file")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    _one_line_error(run("ingest", "fhir", one_bundle, "--cohort", model), "--create")
    assert not (model / "cohort.duckdb").exists()
    assert run("ingest", "fhir", one_bundle, "--cohort", model, "--create", "--json").exit_code == 0
    assert (model / "cohort.duckdb").exists()


def test_deid_key_from_file_or_environment_and_a_warning_inline(tmp_path, one_bundle):
    key = "ab" * 32
    keyfile = tmp_path / "key"
    keyfile.write_text(key + "\n")
    by_file = run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "a", "--deid-key-file", keyfile, "--json")
    by_env = run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "b", "--json", env={"BIOMM_DEID_KEY": key})
    inline = run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "c", "--deid-key", key, "--json")
    assert by_file.exit_code == by_env.exit_code == inline.exit_code == 0
    assert "warning:" not in by_file.output and "warning:" not in by_env.output
    assert "--deid-key on the command line shows in `ps`" in inline.output
    from biomm.store.cohort import Cohort

    ids = []
    for name in "abc":
        with Cohort(tmp_path / name, create=False, read_only=True) as c:
            ids.append(c.subjects())
    assert ids[0] == ids[1] == ids[2]
    _one_line_error(run("ingest", "fhir", one_bundle, "--cohort", tmp_path / "d", "--deid-key-file", tmp_path / "nokey"),
                    "--deid-key-file")


def test_requarantined_source_is_reported_again_with_brackets_intact(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Jane_Doe_[p2].json").write_text('{"resourceType": "Bundle", "entry": [')
    first = run("ingest", "fhir", src, "--cohort", tmp_path / "c")
    again = run("ingest", "fhir", src, "--cohort", tmp_path / "c", "--json")
    assert first.exit_code == 3 and again.exit_code == 3, again.output
    assert "Jane_Doe" not in first.output + again.output  # sources by checksum label
    summary = json.loads(again.stdout)
    assert summary["quarantined"] == 1 and summary["sources_skipped_unchanged"] == 1
    q = summary["quarantine"][0]
    assert q["source"].startswith("sha256:") and q["reason"].startswith("still quarantined: ")
    assert "[" in first.output.split("quarantined", 1)[1] or "line" in first.output  # markup did not eat brackets


def test_bracketed_reason_is_printed_verbatim(capsys):
    from biomm.commands.common import print_summary
    from biomm.ingest.base import IngestSummary, QuarantineEntry

    s = IngestSummary(modality="fhir", cohort="c", quarantined=1, seconds=1.23456,
                      quarantine=[QuarantineEntry(source="sha256:00ff.json", record="Observation/[p2]",
                                                  reason="bad value [bold]x[/bold] in [p2]")])
    print_summary(s, as_json=False)
    err = capsys.readouterr()
    assert "Observation/[p2]" in err.err and "bad value [bold]x[/bold] in [p2]" in err.err
    assert "1.2 s" in err.out and "1.23456" not in err.out


def test_library_warnings_only_with_verbose(tmp_path):
    code = textwrap.dedent("""
        import sys, warnings
        from biomm.commands.apps import quiet_libraries
        quiet_libraries(verbose=sys.argv[1] == "1")
        warnings.warn("notice from /site-packages/pydicom/x.py", UserWarning)""")
    quiet = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    loud = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True)
    assert quiet.returncode == loud.returncode == 0
    assert "notice from" not in quiet.stderr
    assert "notice from" in loud.stderr and "py.warnings" in loud.stderr
    assert run("--verbose", "cohort", "info", tmp_path / "none").exit_code == 2


def test_version_and_flag_help():
    from importlib.metadata import version

    res = run("--version")
    assert res.exit_code == 0 and res.output.strip() == f"biomm {version('biomm')}"
    for args in (["ingest", "fhir", "--help"], ["query", "--help"], ["embed", "--help"], ["--help"]):
        text = run(*args).output
        assert "<bool>" not in text, args
    q = run("query", "--help").output
    assert "death_1y" in q and "How many similar" in q
    assert "Print what was embedded" in run("embed", "--help").output
