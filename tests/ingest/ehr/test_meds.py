"""MEDS in: `biomm ingest meds` round-trips a biomm export (exactly without de-identification; with it, as keyed
pseudonyms and shifted dates), reads v0.3 datasets through the shim, and refuses a dataset that breaks a
MEDS rule whole, naming the file and the rule, with nothing written."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from biomm.ingest.ehr.fhir import ingest as ingest_fhir
from biomm.ingest.ehr.meds import ingest as ingest_meds
from biomm.modalities import spec
from biomm.store.cohort import Cohort
from biomm.store.events import read_events, read_notes
from biomm.store.meds import MedsError, export_meds


def _data(out: Path) -> pa.Table:
    t = pa.concat_tables([pq.read_table(f) for f in sorted((out / "data").rglob("*.parquet"))])
    return t.sort_by([("subject_id", "ascending"), ("time", "ascending"), ("code", "ascending")])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir) -> Path:
    """A biomm MEDS export (with notes) of 12 real Synthea patients."""
    root = tmp_path_factory.mktemp("meds_in")
    files = sorted((data_dir / "synthea").glob("*.json.gz"))[:12]
    ingest_fhir(files, root / "cohort", {"deid": {"key": "k1"}}, progress=False)
    with Cohort(root / "cohort") as c:
        export_meds(c, root / "meds", shards=3, notes=True)
    return root / "meds"


def test_round_trip_without_deid_is_exact(exported, tmp_path):
    summary = ingest_meds([exported], tmp_path / "c", {"deid": {"enabled": False}}, progress=False)
    assert summary.subjects_added == 12 and summary.quarantined == 0
    with Cohort(tmp_path / "c") as c:
        export_meds(c, tmp_path / "again", notes=True)
    assert _data(tmp_path / "again").equals(_data(exported))
    for name in ("subject_splits.parquet", "codes.parquet"):
        a = pq.read_table(exported / "metadata" / name).sort_by(pq.read_table(exported / "metadata" / name).column_names[0])
        b = pq.read_table(tmp_path / "again" / "metadata" / name).sort_by(a.column_names[0])
        assert a.equals(b), name
    again = ingest_meds([exported], tmp_path / "c", {"deid": {"enabled": False}}, progress=False)
    assert again.sources_skipped_unchanged == 3 and again.items_written == 0


def test_round_trip_with_deid_pseudonymises_and_shifts(exported, tmp_path):
    summary = ingest_meds([exported], tmp_path / "c", {"deid": {"key": "another"}}, progress=False)
    src = _data(exported)
    with Cohort(tmp_path / "c", deid_key="another") as c:
        events = read_events(tmp_path / "c", columns=("subject_id", "time", "code"))
        notes = read_notes(tmp_path / "c")
        sid = src.column("subject_id")[0].as_py()
        ours = c.deid.subject_id(str(sid))
        shift = c.subject_shift(ours)
        splits = c.split_map()
    assert summary.items_written == src.num_rows == events.num_rows + len(notes)
    assert all(s.startswith("P") and str(sid) not in s for s in events.column("subject_id").to_pylist())
    assert shift not in (None, 0)
    mine = [r for r in src.to_pylist() if r["subject_id"] == sid and not r["code"].startswith("NOTE/")]
    theirs = [r for r in events.to_pylist() if r["subject_id"] == ours]
    assert len(mine) == len(theirs)
    assert Counter(r["code"] for r in mine) == Counter(r["code"] for r in theirs)
    first = min(r["time"] for r in mine if r["time"] is not None)
    assert min(r["time"] for r in theirs if r["time"] is not None) == first + timedelta(days=shift)
    meds_splits = pq.read_table(exported / "metadata" / "subject_splits.parquet").to_pylist()
    to_cohort = {"train": "train", "tuning": "val", "held_out": "test"}
    with Cohort(tmp_path / "c", deid_key="another") as c:
        assert all(splits[c.deid.subject_id(str(r["subject_id"]))] == to_cohort[r["split"]] for r in meds_splits)
    assert len(notes) == sum(c.startswith("NOTE/") for c in src.column("code").to_pylist())


def _v03(root: Path) -> Path:
    """A small MEDS v0.3.0-style dataset: patient_id, patient_splits, string text_value, no numeric_value column."""
    (root / "data" / "held_out").mkdir(parents=True)
    (root / "metadata").mkdir()
    t0 = datetime(2020, 1, 1)
    rows = {"patient_id": [7, 7, 7, 9], "time": [None, t0, t0 + timedelta(days=3), t0],
            "code": ["MEDS_BIRTH", "LAB/glucose", "DX/E11", "LAB/glucose"], "text_value": [None, "high", None, None]}
    pq.write_table(pa.table(rows, schema=pa.schema([("patient_id", pa.int64()), ("time", pa.timestamp("us")),
                                                    ("code", pa.string()), ("text_value", pa.string())])),
                   root / "data" / "held_out" / "0.parquet")
    pq.write_table(pa.table({"code": ["DX/E11"], "description": ["Type 2 diabetes"]}), root / "metadata" / "codes.parquet")
    pq.write_table(pa.table({"patient_id": pa.array([7, 9], pa.int64()), "split": ["train", "held_out"]}),
                   root / "metadata" / "patient_splits.parquet")
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "tiny", "meds_version": "0.3.0"}))
    return root


def test_v03_dataset_through_the_shim(tmp_path):
    summary = ingest_meds([_v03(tmp_path / "v03")], tmp_path / "c", {"deid": {"enabled": False}}, progress=False)
    assert summary.subjects_added == 2 and summary.items_written == 4
    with Cohort(tmp_path / "c") as c:
        assert c.split_map() == {"7": "train", "9": "test"}
        assert c.code_displays()["DX/E11"] == "Type 2 diabetes"
    t = read_events(tmp_path / "c", columns=("subject_id", "code", "numeric_value", "text_value"))
    assert t.column("text_value").to_pylist().count("high") == 1
    assert t.column("numeric_value").null_count == 4


def _copy(exported: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    return bad


def _shard(bad: Path) -> Path:
    return sorted((bad / "data").glob("*.parquet"))[0]


def _missing_dataset_json(bad):
    (bad / "metadata" / "dataset.json").unlink()
    return "metadata/dataset.json", "missing metadata file"


def _missing_codes(bad):
    (bad / "metadata" / "codes.parquet").unlink()
    return "metadata/codes.parquet", "missing metadata file"


def _string_ids(bad):
    f = _shard(bad)
    t = pq.read_table(f)
    pq.write_table(t.set_column(0, "subject_id", t.column("subject_id").cast(pa.string())), f)
    return f.name, "not an integer"


def _unsorted(bad):
    f = _shard(bad)
    t = pq.read_table(f)
    first = t.column("subject_id")[0].as_py()
    n = sum(1 for s in t.column("subject_id").to_pylist() if s == first)
    idx = np.r_[np.arange(n)[::-1], np.arange(n, t.num_rows)]  # one subject's rows in reverse time order
    pq.write_table(t.take(pa.array(idx)), f)
    return f.name, "not sorted by time"


def _interleaved(bad):
    f = _shard(bad)
    t = pq.read_table(f)
    ids = t.column("subject_id").to_numpy()
    first_other = int(np.flatnonzero(ids != ids[0])[0])
    idx = np.r_[[0], [first_other], np.arange(1, first_other), np.arange(first_other + 1, t.num_rows)]
    pq.write_table(t.take(pa.array(idx)), f)
    return f.name, "not contiguous"


def _two_shards(bad):
    a, b = sorted((bad / "data").glob("*.parquet"))[:2]
    ta, tb = pq.read_table(a), pq.read_table(b)
    sid = ta.column("subject_id")[0].as_py()
    mine = ta.filter(pc.equal(ta.column("subject_id"), sid))
    moved = mine.slice(mine.num_rows - 1)
    pq.write_table(pa.concat_tables([moved, tb]), b)
    pq.write_table(pa.concat_tables([ta.slice(0, mine.num_rows - 1), ta.slice(mine.num_rows)]), a)
    return b.name, "one shard"


@pytest.mark.parametrize("breaker", [_missing_dataset_json, _missing_codes, _string_ids, _unsorted, _interleaved, _two_shards])
def test_bad_dataset_is_refused_whole_naming_file_and_rule(exported, tmp_path, breaker):
    bad = _copy(exported, tmp_path)
    where, rule = breaker(bad)
    cohort = tmp_path / "c"
    with pytest.raises(MedsError) as err:
        ingest_meds([bad], cohort, progress=False)
    assert where in str(err.value) and rule in str(err.value)
    assert not cohort.exists(), "a refused dataset must leave nothing behind"


def test_cli_and_registry(exported, tmp_path):
    from biomm.cli import app

    assert spec("ehr").reader("meds") is ingest_meds
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "meds", str(exported), "--cohort", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["subjects_added"] == 12
    bad = _copy(exported, tmp_path)
    (bad / "metadata" / "codes.parquet").unlink()
    res = runner.invoke(app, ["ingest", "meds", str(bad), "--cohort", str(tmp_path / "c2")])
    assert res.exit_code == 2 and "codes.parquet" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export", "meds", str(tmp_path / "c"), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["subjects"] == 12
