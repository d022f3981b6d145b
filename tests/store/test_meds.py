"""MEDS out: `biomm export meds` on a real Synthea cohort validates with the `meds` package's schemas, reads back
with meds_reader (counts checked against the cohort), updates incrementally, exports task labels, and is
enough on its own for the bag-of-codes and count-GBM baselines."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

meds = pytest.importorskip("meds")
meds_reader = pytest.importorskip("meds_reader")

from biomm.ingest.ehr.fhir import ingest as ingest_fhir  # noqa: E402
from biomm.store.cohort import Cohort  # noqa: E402
from biomm.store.events import read_events  # noqa: E402
from biomm.store.meds import MedsError, export_meds, meds_subject_id, meds_subject_ids  # noqa: E402

BIN = Path(sys.executable).parent


def bundles(data_dir: Path, a: int, b: int) -> list[Path]:
    return sorted((data_dir / "synthea").glob("*.json.gz"))[a:b]


@pytest.fixture(scope="module")
def fhir_cohort(tmp_path_factory, data_dir) -> Path:
    """40 real Synthea patients, de-identified with a fixed key (module-scoped: copy before writing)."""
    root = tmp_path_factory.mktemp("meds_cohort") / "cohort"
    ingest_fhir(bundles(data_dir, 0, 40), root, {"deid": {"key": "meds-test"}}, progress=False)
    return root


@pytest.fixture(scope="module")
def export(fhir_cohort, tmp_path_factory) -> Path:
    from biomm.commands.meds import export_cohort_meds

    out = tmp_path_factory.mktemp("meds_export") / "meds"
    export_cohort_meds(fhir_cohort, out, shards=4, tasks=["death_1y", "hypertension_onset_3y"])
    return out


def _data(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "data").glob("*.parquet"))])


def test_every_table_validates_with_the_meds_schemas(export):
    shards = sorted((export / "data").glob("*.parquet"))
    assert len(shards) == 4
    seen: set[int] = set()
    for f in shards:
        t = pq.read_table(f)
        meds.DataSchema.validate(t)
        ids = t.column("subject_id").to_numpy()
        assert not seen & set(ids.tolist()), "a subject is in two shards"
        seen |= set(ids.tolist())
        times = t.column("time").cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()
        order = np.lexsort((times, ids))
        assert (order == np.arange(len(ids))).all(), f"{f.name} is not sorted by (subject_id, time)"
    codes = pq.read_table(export / "metadata" / "codes.parquet")
    meds.CodeMetadataSchema.validate(codes)
    assert set(_data(export).column("code").to_pylist()) <= set(codes.column("code").to_pylist())
    assert sum(d is not None for d in codes.column("description").to_pylist()) > 0.5 * codes.num_rows
    splits = pq.read_table(export / "metadata" / "subject_splits.parquet")
    meds.SubjectSplitSchema.validate(splits)
    assert set(splits.column("split").to_pylist()) <= {"train", "tuning", "held_out"}
    assert set(splits.column("subject_id").to_pylist()) == seen
    meta = json.loads((export / "metadata" / "dataset.json").read_text())
    meds.DatasetMetadataSchema.validate(meta)
    assert meta["meds_version"].startswith("0.4") and meta["other_extension_columns"] == ["unit"]
    for task in ("death_1y", "hypertension_onset_3y"):
        labels = pq.read_table(export / "labels" / task / "labels.parquet")
        meds.LabelSchema.validate(labels)
        assert set(labels.column("subject_id").to_pylist()) <= seen


def test_meds_reader_reads_the_export_and_counts_match_the_cohort(export, fhir_cohort, tmp_path):
    db_path = tmp_path / "db"
    subprocess.run([str(BIN / "meds_reader_convert"), str(export), str(db_path)], check=True, capture_output=True)
    subprocess.run([str(BIN / "meds_reader_verify"), str(export), str(db_path)], check=True, capture_output=True)
    events = read_events(fhir_cohort)
    with Cohort(fhir_cohort, create=False, read_only=True) as c:
        ids = meds_subject_ids(c.deid, c.subjects_with_any(["ehr"]))
    per_subject = Counter(events.column("subject_id").to_pylist())
    with meds_reader.SubjectDatabase(str(db_path)) as db:
        assert len(db) == len(ids) == 40
        assert {int(s) for s in db} == set(ids.values())
        for sid, n in per_subject.items():
            subject = db[ids[sid]]
            assert len(subject.events) == n
        assert "unit" in db.properties
        sid = next(iter(per_subject))
        cohort_codes = Counter(c for s, c in zip(events.column("subject_id").to_pylist(), events.column("code").to_pylist())
                               if s == sid)
        assert Counter(e.code for e in db[ids[sid]].events) == cohort_codes


def test_export_is_incremental_and_whole(fhir_cohort, data_dir, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(fhir_cohort, cohort)
    out = tmp_path / "meds"
    with Cohort(cohort) as c:
        first = export_meds(c, out, shards=8)
        assert first.shards_written == first.shards and first.shards_reused == 0
        again = export_meds(c, out)  # nothing changed: every shard is reused, the shard count is kept
        assert again.shards_written == 0 and again.shards_reused == first.shards
    ingest_fhir(bundles(data_dir, 40, 43), cohort, progress=False)  # three new patients
    with Cohort(cohort) as c:
        third = export_meds(c, out)
        n_events = read_events(cohort).num_rows
    assert third.subjects == 43 and 1 <= third.shards_written <= 3
    assert third.shards_reused == third.shards - third.shards_written
    assert _data(out).num_rows == third.events == n_events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".meds")], "temporary folders left behind"


def test_export_refuses_a_folder_that_is_not_an_export(fhir_cohort, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with Cohort(fhir_cohort, create=False, read_only=True) as c, pytest.raises(MedsError, match="not a biomm MEDS export"):
        export_meds(c, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_subject_ids_are_63_bit_pseudonyms_and_collisions_are_refused(fhir_cohort):
    with Cohort(fhir_cohort, create=False, read_only=True) as c:
        deid = c.deid
        sid = c.subjects()[0]
    assert meds_subject_id(deid, sid) == int(sid[1:], 16) >> 1 < 2**63
    assert meds_subject_id(deid, "12345") == 12345  # a cohort without de-identification keeps numeric ids
    other = meds_subject_id(deid, "patient-a")
    assert 0 <= other < 2**63 and other != meds_subject_id(deid, "patient-b")
    with pytest.raises(MedsError, match="same MEDS id"):  # differ only in the bit that truncation drops
        meds_subject_ids(deid, ["P0000000000000000", "P0000000000000001"])


def test_notes_export_on_request(fhir_cohort, tmp_path):
    with Cohort(fhir_cohort, create=False, read_only=True) as c:
        plain = export_meds(c, tmp_path / "plain")
        with_notes = export_meds(c, tmp_path / "notes", notes=True)
    data = _data(tmp_path / "notes")
    note_rows = [c for c in data.column("code").to_pylist() if c.startswith("NOTE/")]
    assert len(note_rows) == with_notes.events - plain.events > 0
    meds.DataSchema.validate(data)


def test_baselines_run_from_the_export_alone(export, fhir_cohort, tmp_path):
    """The export, copied away from the cohort, is all the baselines read; their code counts equal the cohort's."""
    from biomm.commands.meds import task_labels
    from biomm.data.ehr import EhrEvents, EhrVocab
    from biomm.data.samples import Sample
    from biomm.eval.meds_baselines import code_counts, read_labels, run_baselines
    from biomm.heads.clinical import bag_of_codes

    alone = tmp_path / "alone"
    shutil.copytree(export, alone)
    task = "hypertension_onset_3y"
    labels = read_labels(alone, task)
    x, vocab = code_counts(alone, labels)
    rows = task_labels(fhir_cohort, [task])[task]
    with Cohort(fhir_cohort, create=False, read_only=True) as c:
        ids = meds_subject_ids(c.deid, c.subjects_with_any(["ehr"]))
    back = {v: k for k, v in ids.items()}
    events = EhrEvents(fhir_cohort, EhrVocab.build(fhir_cohort, None, 1))
    epoch = np.datetime64("1970-01-01T00:00:00", "us")
    samples = [Sample(back[s], float((t - epoch) / np.timedelta64(1, "us")) / 86_400e6, {})
               for s, t in zip(labels.column("subject_id").to_pylist(),
                               labels.column("prediction_time").to_numpy())]
    assert len(samples) == len(rows.subject_ids)
    y, v2 = bag_of_codes(events, samples, vocab)
    assert np.array_equal(y.toarray(), x.toarray())
    report = run_baselines(alone, task, n_boot=50)
    assert report["train"]["rows"] + report["held_out"]["rows"] == labels.num_rows
    if "skipped" not in report:
        for model in ("bag_of_codes_lr", "count_gbm"):
            auroc = report[model]["auroc"]
            assert auroc is None or 0.0 <= auroc <= 1.0
