"""The cohort store: manifest tables from the modality specs, typed bulk writes, `cohort info` sections."""
from __future__ import annotations

import re

from biomm.modalities import MODALITIES
from biomm.store.cohort import Cohort, Record
from biomm.store.summary import cohort_summary


def test_tables_of_every_spec_are_created(tmp_path):
    with Cohort(tmp_path / "c") as c:
        tables = {r[0] for r in c.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for spec in MODALITIES.values():
        for ddl in spec.tables:
            assert re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl).group(1) in tables


def test_bulk_writes_and_summary_sections(tmp_path):
    with Cohort(tmp_path / "c") as c:
        assert c.add_subjects([("s1", 3), ("s2", -4)], kind="patient", created_by="test") == 2
        assert c.add_subjects([("s1", 3)], kind="patient", created_by="test") == 0
        c.add_records([Record("r1", "s1", "imaging", "imaging/r1.npz", "abc", "src", "def", 1, {"kind": "image"})])
        c.mark_sources("imaging", [("def", "src", 1, 0)])
        c.replace_labels("y", ["s1", "s2"], [1, 0], source="test")
        c.replace_labels("y", ["s1"], [0], source="test")
        assert c.ingested_sources("imaging") == {"def"} and c.subject_shift("s2") == -4
        assert c.subject_shifts(["s2", "nobody", "s1", "s2"]) == {"s1": 3, "s2": -4}
        assert sorted(c.labels("y")) == [("s1", "0", None), ("s2", "0", None)]
        info = cohort_summary(c)
    assert list(info) == ["cohort", "deid", "subjects", "subjects_by_kind", "subjects_by_modality",
                          "records_by_modality", "splits", "ehr", "quarantine", "imaging"]
    assert info["ehr"] == {"events": 0} and info["imaging"]["series"] == 1
