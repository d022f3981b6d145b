"""FHIR ingest on the real Synthea bundles the project ships, and on every kind of bad input."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomm.ingest.ehr import fhir
from biomm.ingest.ehr.config import FhirIngestConfig
from biomm.ingest.ehr.extract import Extractor, ResourceContext, parse_time
from biomm.ingest.base import IngestError
from biomm.store.cohort import Cohort

SYNTHEA = Path(__file__).resolve().parents[3] / "biomm" / "resources" / "data" / "synthea"


def bundles(n: int) -> list[Path]:
    return sorted(SYNTHEA.glob("*.json.gz"))[:n]


def load_bundle(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def events(cohort_dir: Path):
    return pq.read_table(sorted((cohort_dir / "ehr" / "events").glob("*.parquet"))).to_pylist()


def manifest(cohort_dir: Path, sql: str):
    con = duckdb.connect(str(cohort_dir / "cohort.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_real_bundles_become_meds_events(cohort_dir):
    files = bundles(5)
    summary = fhir.ingest(files, cohort_dir)
    assert summary.quarantined == 0
    assert summary.subjects_added == 5
    rows = events(cohort_dir)
    assert set(rows[0]) == {"subject_id", "time", "code", "numeric_value", "text_value", "unit"}
    codes = {r["code"] for r in rows}
    assert "MEDS_BIRTH" in codes
    assert any(c.startswith("SNOMED/") for c in codes) and any(c.startswith("LOINC/") for c in codes)
    # blood pressure panels arrive as components: systolic and diastolic become their own events
    systolic = [r for r in rows if r["code"] == "LOINC/8480-6"]
    diastolic = [r for r in rows if r["code"] == "LOINC/8462-4"]
    assert systolic and diastolic and len(systolic) == len(diastolic)
    assert all(60 < r["numeric_value"] < 250 and r["unit"] == "mm[Hg]" for r in systolic)
    # every Observation with a value, Condition, Immunization of the source is an event
    n_obs = sum(1 for f in files for e in load_bundle(f)["entry"] if e["resource"]["resourceType"] == "Observation")
    n_imm = sum(1 for f in files for e in load_bundle(f)["entry"] if e["resource"]["resourceType"] == "Immunization")
    assert sum(1 for r in rows if r["code"].startswith("CVX/")) == n_imm
    assert sum(1 for r in rows if r["code"].startswith("LOINC/")) >= n_obs


def test_dates_shift_per_patient_and_keep_intervals(cohort_dir):
    src = bundles(1)[0]
    bundle = load_bundle(src)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    fhir.ingest([src], cohort_dir)
    with Cohort(cohort_dir) as c:
        sid = c.deid.subject_id(patient["id"])
        shift = c.subject_shift(sid)
    assert shift != 0 and abs(shift) <= 365
    rows = [r for r in events(cohort_dir) if r["subject_id"] == sid]
    birth = next(r["time"] for r in rows if r["code"] == "MEDS_BIRTH")
    from datetime import datetime, timedelta
    assert birth == datetime.fromisoformat(patient["birthDate"]) + timedelta(days=shift)


def test_deidentification_leaves_no_phi_in_the_cohort(cohort_dir):
    files = bundles(6)
    fhir.ingest(files, cohort_dir)
    assert not (cohort_dir / "quarantine").exists()
    phi: set[str] = set()
    for f in files:
        for e in load_bundle(f)["entry"]:
            r = e["resource"]
            if r["resourceType"] != "Patient":
                continue
            phi.add(r["id"])
            for name in r.get("name", []):
                phi.add(name["family"])
                phi.update(name.get("given", []))
            for addr in r.get("address", []):
                phi.update(addr.get("line", []))
            phi.update(i["value"] for i in r.get("identifier", []))
            phi.update(t["value"] for t in r.get("telecom", []))
            # file names carry the patient's name and id too
            phi.add(f.name.split("_")[0])
    phi = {p for p in phi if len(p) >= 4}
    blobs = []
    for path in cohort_dir.rglob("*"):
        if path.is_file() and path.name != "deid.key":
            blobs.append(path.read_bytes())
    blobs.append(json.dumps(manifest(cohort_dir, "SELECT * FROM records"), default=str).encode())
    blobs.append(json.dumps(manifest(cohort_dir, "SELECT * FROM sources"), default=str).encode())
    blobs.append(json.dumps([list(map(str, r)) for r in events(cohort_dir)]).encode())
    for value in phi:
        for blob in blobs:
            assert value.encode() not in blob, f"PHI {value!r} reached the cohort"


def test_reingest_is_idempotent_and_new_sources_add(cohort_dir):
    first = fhir.ingest(bundles(3), cohort_dir)
    n_events = len(events(cohort_dir))
    again = fhir.ingest(bundles(3), cohort_dir)
    assert again.sources_skipped_unchanged == 3 and again.items_written == 0
    assert len(events(cohort_dir)) == n_events
    more = fhir.ingest(bundles(4), cohort_dir)
    assert more.sources_skipped_unchanged == 3 and more.subjects_added == 1
    assert manifest(cohort_dir, "SELECT count(*) FROM subjects")[0][0] == first.subjects_added + 1


def test_same_resources_in_a_new_file_are_not_duplicated(cohort_dir, tmp_path):
    src = bundles(1)[0]
    fhir.ingest([src], cohort_dir)
    n = len(events(cohort_dir))
    copy = tmp_path / "copy.json"  # same content, different bytes (not gzipped): a new source
    copy.write_bytes(gzip.decompress(src.read_bytes()))
    summary = fhir.ingest([copy], cohort_dir)
    assert summary.sources_skipped_unchanged == 0
    assert summary.items_written == 0 and summary.items_skipped_duplicate > 0
    assert len(events(cohort_dir)) == n


def test_a_resource_repeated_across_batches_of_one_fresh_run_is_stored_once(cohort_dir, tmp_path, monkeypatch):
    src = bundles(1)[0]
    once = tmp_path / "once"
    fhir.ingest([src], once)
    expected = len(events(once))
    copy = tmp_path / "copy.json"  # same resources in a second source, committed in a later batch of the same run
    copy.write_bytes(gzip.decompress(src.read_bytes()))
    monkeypatch.setattr(fhir._Batch, "MAX_FILES", 1)
    summary = fhir.ingest([src, copy], cohort_dir)
    assert summary.items_skipped_duplicate > 0 and summary.quarantined == 0
    assert len(events(cohort_dir)) == expected
    keys = manifest(cohort_dir, "SELECT count(*), count(DISTINCT resource_key) FROM fhir_resource_keys")[0]
    assert keys[0] == keys[1] > 0


def test_a_cohort_with_the_old_indexed_resource_table_is_migrated(cohort_dir, tmp_path):
    src = bundles(1)[0]
    fhir.ingest([src], cohort_dir)
    n = len(events(cohort_dir))
    con = duckdb.connect(str(cohort_dir / "cohort.duckdb"))  # rewrite the manifest as an older biomm left it
    con.execute("CREATE TABLE fhir_resources (resource_key VARCHAR PRIMARY KEY, content_hash VARCHAR, "
                "source_checksum VARCHAR)")
    con.execute("INSERT INTO fhir_resources SELECT resource_key, content_hash, source_checksum FROM fhir_resource_keys")
    con.execute("DROP TABLE fhir_resource_keys")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    copy = tmp_path / "copy.json"
    copy.write_bytes(gzip.decompress(src.read_bytes()))
    summary = fhir.ingest([copy], cohort_dir)
    assert summary.items_written == 0 and summary.items_skipped_duplicate > 0
    assert len(events(cohort_dir)) == n
    tables = {r[0] for r in manifest(cohort_dir, "SELECT table_name FROM information_schema.tables")}
    assert "fhir_resources" not in tables


def _bad_cases(tmp: Path, good: dict) -> dict[str, Path]:
    entries = good["entry"]
    patient = entries[0]["resource"]
    obs = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation")
    enc = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Encounter")
    med = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Encounter")
    cases = {}
    (tmp / "not_json.json").write_text("{this is not json")
    cases["not JSON"] = tmp / "not_json.json"
    gz = gzip.compress(json.dumps(good).encode())
    (tmp / "truncated.json.gz").write_bytes(gz[: len(gz) // 2])
    cases["truncated"] = tmp / "truncated.json.gz"

    def bundle_with(name: str, *resources: dict) -> Path:
        b = {"resourceType": "Bundle", "type": "collection",
             "entry": [{"resource": patient}] + [{"resource": r} for r in resources]}
        p = tmp / name
        p.write_text(json.dumps(b))
        return p

    cases["unknown resourceType"] = bundle_with("unknown.json", {**obs, "id": "x1", "resourceType": "Observashun"})
    cases["R5-only resourceType"] = bundle_with("r5type.json", {"resourceType": "ArtifactAssessment", "id": "a1"})
    no_subject = {k: v for k, v in obs.items() if k != "subject"}
    cases["no subject reference"] = bundle_with("nosubject.json", {**no_subject, "id": "x2"})
    r5_enc = {**enc, "id": "x3", "class": [{"coding": [enc["class"]]}]}
    cases["R5-only shape"] = bundle_with("r5shape.json", r5_enc)
    r5_med = {"resourceType": "MedicationRequest", "id": "x6", "status": "active", "intent": "order",
              "medication": {"concept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1"}]}},
              "subject": obs["subject"], "authoredOn": "2015-01-01"}
    cases["R5 MedicationRequest"] = bundle_with("r5med.json", r5_med)
    changed = {**obs, "valueQuantity": {**obs.get("valueQuantity", {}), "value": -1}}
    cases["duplicate id"] = bundle_with("dup.json", obs, changed)
    cases["impossible date"] = bundle_with("baddate.json", {**obs, "id": "x4", "effectiveDateTime": "2019-02-30T10:00:00+00:00"})
    cases["future date"] = bundle_with("future.json", {**obs, "id": "x5", "effectiveDateTime": "2999-01-01"})
    del med
    return cases


def test_each_bad_input_is_quarantined_with_a_reason_and_the_rest_goes_on(cohort_dir, tmp_path):
    good_src = bundles(2)
    good = load_bundle(good_src[0])
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    cases = _bad_cases(bad_dir, good)
    summary = fhir.ingest([*cases.values(), good_src[1]], cohort_dir)
    # sources are named by checksum label, never by file name (issue 18): map the labels back to the names
    from biomm.store.atomic import sha256_file

    names = {f"sha256:{sha256_file(p)[:16]}{''.join(Path(p).suffixes[-2:])}": Path(p).name for p in cases.values()}
    reasons = {names.get(q.source, q.source): q for q in summary.quarantine}
    expect = {
        "not_json.json": ("not JSON", None),
        "truncated.json.gz": ("truncated", None),
        "unknown.json": ("unknown resourceType 'Observashun'", "resourceType"),
        "r5type.json": ("R5-only resourceType 'ArtifactAssessment'", "resourceType"),
        "nosubject.json": ("no subject reference", "subject/patient"),
        "r5shape.json": ("R5-only shape", "class"),
        "r5med.json": ("R5-only shape", "medication"),
        "dup.json": ("duplicate resource id with different content", "id"),
        "baddate.json": ("impossible date '2019-02-30", "effectiveDateTime"),
        "future.json": ("impossible date '2999-01-01'", "effectiveDateTime"),
    }
    for name, (reason, field) in expect.items():
        assert name in reasons, f"{name} was not quarantined"
        assert reason in reasons[name].reason
        assert reasons[name].field == field
    assert reasons["dup.json"].record.startswith("Observation/")
    assert summary.quarantined == len(expect) and summary.exit_code == 3
    # the good patients (the second bundle, and the Patient inside each bad bundle) were ingested
    subjects = {r["subject_id"] for r in events(cohort_dir)}
    assert len(subjects) == 2
    # raw copies and reasons are kept
    stored = manifest(cohort_dir, "SELECT stored_path, reason FROM quarantine")
    assert len(stored) == len(expect)
    for rel, reason in stored:
        assert (cohort_dir / rel).is_file()
        assert json.loads((cohort_dir / rel).parent.joinpath("reason.json").read_text())["reason"] == reason
    # a re-run is idempotent: nothing new, the quarantine unchanged
    again = fhir.ingest([*cases.values(), good_src[1]], cohort_dir)
    assert again.quarantined == len({q.source for q in summary.quarantine})  # reported again (issue 18)
    assert all(q.reason.startswith("still quarantined: ") for q in again.quarantine)
    assert again.sources_skipped_unchanged == 11  # unreadable files are marked done too: their quarantine entry stands
    assert len(manifest(cohort_dir, "SELECT * FROM quarantine")) == len(expect)


def test_ndjson_bulk_export_with_a_bad_line(cohort_dir, tmp_path):
    bundle = load_bundle(bundles(1)[0])
    by_type: dict[str, list[dict]] = {}
    for e in bundle["entry"]:
        r = dict(e["resource"])
        for key in ("subject", "patient"):
            if key in r and r[key]["reference"].startswith("urn:uuid:"):
                r[key] = {"reference": "Patient/" + r[key]["reference"][9:]}
        by_type.setdefault(r["resourceType"], []).append(r)
    files = []
    for rtype in ("Patient", "Observation", "Condition"):
        lines = [orjson.dumps(r).decode() for r in by_type.get(rtype, [])]
        if rtype == "Observation":
            lines.insert(1, '{"resourceType": "Observation", "id": ')
        p = tmp_path / f"{rtype}.ndjson.gz"
        p.write_bytes(gzip.compress("\n".join(lines).encode()))
        files.append(p)
    summary = fhir.ingest([tmp_path], cohort_dir)
    assert summary.sources_seen == 3
    assert summary.quarantined == 1 and summary.quarantine[0].record == "line 2"
    rows = events(cohort_dir)
    assert len({r["subject_id"] for r in rows}) == 1
    assert sum(1 for r in rows if r["code"] == "MEDS_BIRTH") == 1


def test_no_deid_keeps_ids_and_says_so(cohort_dir):
    src = bundles(1)[0]
    patient = next(e["resource"] for e in load_bundle(src)["entry"] if e["resource"]["resourceType"] == "Patient")
    cfg = FhirIngestConfig()
    cfg.deid.enabled = False
    fhir.ingest([src], cohort_dir, cfg)
    assert {r["subject_id"] for r in events(cohort_dir)} == {patient["id"]}
    assert manifest(cohort_dir, "SELECT value FROM meta WHERE key = 'deid'") == [("off",)]
    with pytest.raises(Exception, match="de-identification off"):
        fhir.ingest([src], cohort_dir)  # default (de-identify) into a non-de-identified cohort is refused


def test_deid_key_makes_pseudonyms_reproducible(tmp_path):
    src = bundles(1)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        cfg = FhirIngestConfig()
        cfg.deid.key = "00" * 32
        fhir.ingest(src, folder, cfg)
    assert {r["subject_id"] for r in events(a)} == {r["subject_id"] for r in events(b)}


def test_strict_mode_validates_with_fhir_resources(cohort_dir, tmp_path):
    bundle = load_bundle(bundles(1)[0])
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    bad = {**obs, "id": "strict-1", "valueQuantity": {"value": "high", "unit": "mg"}}
    p = tmp_path / "strict.json"
    p.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bad}]}))
    lenient = fhir.ingest([p], tmp_path / "lenient")
    assert lenient.quarantined == 0
    cfg = FhirIngestConfig(strict=True)
    strict = fhir.ingest([p, bundles(1)[0]], cohort_dir, cfg)
    assert strict.quarantined == 1
    assert "invalid under FHIR R4" in strict.quarantine[0].reason
    assert strict.quarantine[0].field.startswith("valueQuantity")


def test_imaging_studies_are_kept_for_the_imaging_link(cohort_dir):
    with_imaging = [f for f in sorted(SYNTHEA.glob("*.json.gz"))
                    if any(e["resource"]["resourceType"] == "ImagingStudy" for e in load_bundle(f)["entry"])][:2]
    fhir.ingest(with_imaging, cohort_dir)
    rows = manifest(cohort_dir, "SELECT study_uid, series_uid, subject_id, modality FROM imaging_studies")
    assert rows
    with Cohort(cohort_dir) as c:
        for f in with_imaging:
            for e in load_bundle(f)["entry"]:
                r = e["resource"]
                if r["resourceType"] == "ImagingStudy":
                    uid = r["identifier"][0]["value"][8:]
                    assert c.deid.uid(uid) in {row[0] for row in rows}
                    assert uid not in {row[0] for row in rows}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_time_never_crashes_only_clear_errors(text):
    ctx = ResourceContext(Path("x.json"), "Observation", "o1", "entry 0")
    from datetime import datetime
    try:
        t = parse_time(text, ctx, "effectiveDateTime", datetime(2100, 1, 1))
    except IngestError as err:
        assert "x.json" in str(err) and "Observation/o1" in str(err)
    else:
        assert t.tzinfo is None


def test_extractor_handles_choice_types():
    ex = Extractor()
    ctx = ResourceContext(Path("x.json"), "Condition", "c1", "entry 0")
    base = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}}
    for key, value in [("onsetDateTime", "2010-05-01"), ("onsetPeriod", {"start": "2010-05-01"}), ("recordedDate", "2010-05-01")]:
        out = ex.condition({**base, key: value}, ctx)
        assert out.patient == "p1" and out.events[0][0].year == 2010 and out.events[0][1] == "SNOMED/38341003"
    obs = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2011-01-01"},
           "code": {"coding": [{"system": "http://example.org/codes", "code": "Z"}]}, "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}
    out = ex.observation(obs, ResourceContext(Path("x.json"), "Observation", "o", "entry 1"))
    assert out.events[0][1] == "http://example.org/codes/Z" and out.events[0][3] == "SNOMED/1"


def test_copied_cohort_folder_is_self_contained(cohort_dir, tmp_path):
    fhir.ingest(bundles(2), cohort_dir)
    moved = tmp_path / "moved"
    shutil.copytree(cohort_dir, moved)
    with Cohort(moved, create=False) as c:
        assert len(c.subjects()) == 2


def test_narratives_become_text_records_with_names_scrubbed(cohort_dir, tmp_path):
    src = bundles(1)[0]
    bundle = load_bundle(src)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    family = patient["name"][0]["family"]
    plan = {"resourceType": "CarePlan", "id": "cp-test", "status": "active", "intent": "plan",
            "subject": {"reference": f"urn:uuid:{patient['id']}"}, "period": {"start": "2015-01-01"},
            "text": {"status": "generated", "div": f"<div>Plan for Mr. {family}: &lt;walk&gt; daily.</div>"},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736285004"}]}]}
    bundle["entry"].append({"resource": plan})
    p = tmp_path / "with_plan.json"
    p.write_text(json.dumps(bundle))
    fhir.ingest([p], cohort_dir)
    notes = pq.read_table(sorted((cohort_dir / "ehr" / "notes").glob("*.parquet"))).to_pylist()
    mine = [n for n in notes if "walk" in n["text"]]
    assert mine and mine[0]["text"] == "Plan for Mr. [NAME]: <walk> daily." and mine[0]["kind"] == "careplan"
    assert all(family not in n["text"] for n in notes)
    assert manifest(cohort_dir, "SELECT count(*) FROM records WHERE modality = 'text'")[0][0] == 1
    assert "SNOMED/736285004" in {r["code"] for r in events(cohort_dir)}


def test_worker_processes_give_the_same_cohort_as_one_process(tmp_path):
    """Decoding in worker processes (the default from 16 files) changes nothing but the speed."""
    files = bundles(18)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.json").write_text('{"resourceType": "Bundle", "type": "collection", "entry": [')
    gz = gzip.compress(files[0].read_bytes())
    (bad / "cut.json.gz").write_bytes(gz[: len(gz) // 3])
    sources = [*files, bad / "broken.json", bad / "cut.json.gz"]
    one = fhir.ingest(sources, tmp_path / "one", FhirIngestConfig(workers=1, deid={"key": "k"}))
    two = fhir.ingest(sources, tmp_path / "two", FhirIngestConfig(workers=2, deid={"key": "k"}))
    for field in ("subjects_added", "records_written", "items_written", "items_ignored", "quarantined"):
        assert getattr(one, field) == getattr(two, field), field
    assert sorted((q.source, q.reason) for q in one.quarantine) == sorted((q.source, q.reason) for q in two.quarantine)
    key = lambda r: (r["subject_id"], str(r["time"]), r["code"], str(r["numeric_value"]), str(r["text_value"]))  # noqa: E731
    assert sorted(map(key, events(tmp_path / "one"))) == sorted(map(key, events(tmp_path / "two")))
    again = fhir.ingest(sources, tmp_path / "two", FhirIngestConfig(workers=2, deid={"key": "k"}))
    assert again.items_written == 0 and again.sources_skipped_unchanged == len(sources)
