"""Patient samples: `data.train_times: notes` adds one training sample per note time, whose record, notes and
images stop at that time; labels stay with the whole-record samples; inference is unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from biomm.config import ConfigError
from biomm.data.config import DataConfig
from biomm.data.datamodule import build_datamodule


def _cfg(**kw) -> DataConfig:
    return DataConfig(kind="patients", modalities=["ehr", "text"], max_events=256, text_vocab_size=200, **kw)


def test_note_time_samples_see_the_record_up_to_each_note(clinical_cohort, tmp_path):
    plain = build_datamodule(clinical_cohort, _cfg(), tmp_path / "a").prepare()
    dm = build_datamodule(clinical_cohort, _cfg(train_times="notes"), tmp_path / "b").prepare()
    whole = [s for s in dm.samples["train"] if s.prediction_time is None]
    timed = [s for s in dm.samples["train"] if s.prediction_time is not None]
    assert [s.subject_id for s in whole] == [s.subject_id for s in plain.samples["train"]]
    assert dm.samples["val"] == plain.samples["val"] and dm.samples["test"] == plain.samples["test"]
    text = dm.sources["text"]
    expected = sum(max(0, len(np.unique(t[np.isfinite(t)])) - 1)
                   for t in (text.note_times(s.subject_id) for s in whole))
    assert len(timed) == expected > 0
    assert all(not s.labels for s in timed)
    s = timed[0]
    first = min(float(t) for t in text.note_times(s.subject_id))
    early = next(x for x in timed if x.subject_id == s.subject_id and x.prediction_time == first)
    batch = dm.collate([early, next(x for x in whole if x.subject_id == s.subject_id)])
    ehr = batch.modalities["ehr"].tensors
    n = ehr["mask"].sum(1)
    assert n[0] < n[1]  # the note-time sample reads fewer events: none after its note
    assert float(ehr["times"][0][ehr["mask"][0]].max()) <= float(ehr["prediction_time"][0]) + 1e-6
    one_note = text.notes.text(s.subject_id, first, 3)
    assert "[SEP]" not in one_note  # only the first note existed by then
    inf = build_datamodule(clinical_cohort, _cfg(train_times="notes"), tmp_path / "b").prepare(load_artifacts=True,
                                                                                           inference=True)
    assert all(x.prediction_time is None for x in inf.samples["all"])


def test_note_times_need_the_text_modality(clinical_cohort, tmp_path):
    with pytest.raises(ConfigError, match="text modality"):
        build_datamodule(clinical_cohort, DataConfig(kind="patients", modalities=["ehr"], train_times="notes"),
                         tmp_path).prepare()
