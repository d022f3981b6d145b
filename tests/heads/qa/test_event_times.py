"""The QA store and the model's EHR events write an event's time identically, and exactly as recorded."""
from __future__ import annotations

import numpy as np

from biomm.data.ehr import EhrEvents, EhrVocab, day_to_iso
from biomm.heads.qa.questions import QAStore
from biomm.store.events import read_events


def test_day_to_iso_rounds_to_the_recorded_second():
    stamp = np.datetime64("2019-03-04T10:15:00", "us")
    day = float((stamp - np.datetime64("1970-01-01T00:00:00", "us")).astype(np.float64) / 86_400e6)
    for jitter in (-1e-9, 0.0, 1e-9):  # float days a hair off the second still name that second
        assert day_to_iso(day + jitter) == "2019-03-04T10:15:00"
    assert day_to_iso(-0.5) == "1969-12-31T12:00:00"


def test_qa_store_and_ehr_events_agree_with_the_shards(clinical_cohort):
    store = QAStore(clinical_cohort, kinds={})
    events = EhrEvents(clinical_cohort, EhrVocab([], {}, {}))
    table = read_events(clinical_cohort, columns=("subject_id", "time")).to_pandas()
    checked = 0
    for subject in sorted(store.events)[:10]:
        recorded = {str(t.to_datetime64().astype("datetime64[s]")) for t in table[table.subject_id == subject].time.dropna()}
        times = np.array([e.day for e in store.events[subject]])
        from_store = {day_to_iso(float(t)) for t in times[np.isfinite(times)]}
        from_events = {e["time"] for e in events.top_events(subject, None, len(times))}
        if not recorded:
            continue
        assert from_store == recorded
        assert from_store <= from_events  # top_events also dates untimed static facts (at the first time)
        checked += 1
    assert checked >= 5
