"""Prediction tasks on MEDS: nothing after the prediction time, labels from after it, censoring."""
from __future__ import annotations

import numpy as np
import pytest

from biomm.config import ConfigError
from biomm.data.ehr import EhrEvents, EhrVocab
from biomm.data.tasks import build_samples, load_tasks


@pytest.fixture(scope="module")
def events(clinical_cohort):
    return EhrEvents(clinical_cohort, EhrVocab([], {}, {}))


def test_shipped_tasks_validate():
    tasks = load_tasks()
    assert {"hypertension_onset_3y", "diabetes_onset_3y", "heart_failure_onset_3y", "death_1y", "xray_pneumonia"} <= set(tasks)


def test_labels_come_from_after_the_prediction_time(events, clinical_cohort):
    task = load_tasks()["death_1y"]
    samples = build_samples(task, events, clinical_cohort)
    assert samples and any(s.labels["death_1y"] == 1 for s in samples)
    for s in samples:
        a, b = events.subjects[s.subject_id]
        codes, times = events.codes_text[a:b], events.times[a:b]
        death = times[codes == "MEDS_DEATH"]
        assert not (death <= s.prediction_time).any(), "a sample after death"
        positive = bool(((death > s.prediction_time) & (death <= s.prediction_time + 365)).any())
        assert s.labels["death_1y"] == float(positive)
        if not positive:  # negatives are observed for the whole horizon (not censored)
            assert times[-1] >= s.prediction_time + 365
        assert s.prediction_time - times[0] >= task.prediction_time.min_history_days


def test_onset_tasks_exclude_prior_outcomes(events, clinical_cohort):
    task = load_tasks()["hypertension_onset_3y"]
    for s in build_samples(task, events, clinical_cohort):
        a, b = events.span(s.subject_id, s.prediction_time)
        assert "SNOMED/38341003" not in set(events.codes_text[a:b])


def test_a_user_task_in_yaml(tmp_path, events, clinical_cohort):
    (tmp_path / "asthma.yaml").write_text(
        "name: bronchitis_1y\ndescription: Acute bronchitis within a year.\n"
        "prediction_time: {anchor_codes: ['SNOMED/*'], per_subject: 2, min_history_days: 0}\n"
        "label: {kind: code_within, codes: [SNOMED/10509002], horizon_days: 365}\n")
    tasks = load_tasks([tmp_path])
    samples = build_samples(tasks["bronchitis_1y"], events, clinical_cohort)
    assert samples and max(len([s for s in samples if s.subject_id == sid]) for sid in {s.subject_id for s in samples}) <= 2
    (tmp_path / "bad.yaml").write_text("name: bad\ndescription: x\nprediction_time: {anchor_codes: [A]}\n"
                                       "label: {kind: code_within, codes: [B], horizonn_days: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'label.horizonn_days'"):
        load_tasks([tmp_path])


def test_xray_task_uses_cohort_labels(query_cohort):
    events = EhrEvents(query_cohort, EhrVocab([], {}, {}))
    samples = build_samples(load_tasks()["xray_pneumonia"], events, query_cohort)
    assert len(samples) >= 20
    assert set(np.unique([s.labels["xray_pneumonia"] for s in samples])) <= {0.0, 1.0}


def test_a_task_that_cannot_apply_to_the_cohort_names_the_task_and_the_field(events, clinical_cohort):
    task = load_tasks()["death_1y"]
    typo = task.model_copy(update={"name": "typo_task", "prediction_time": task.prediction_time.model_copy(
        update={"anchor_codes": ["SNOMD/185349003"]})})
    with pytest.raises(ConfigError, match=r"task typo_task: prediction_time.anchor_codes .*unknown code system 'SNOMD'"):
        build_samples(typo, events, clinical_cohort)
    never = task.model_copy(update={"name": "never_task", "label": task.label.model_copy(update={"codes": ["SNOMED/0000"]})})
    with pytest.raises(ConfigError, match=r"task never_task: label.codes: no subject .* has the outcome SNOMED/0000"):
        build_samples(never, events, clinical_cohort)
    system = task.model_copy(update={"name": "system_task", "label": task.label.model_copy(update={"codes": ["ICD99/*"]})})
    with pytest.raises(ConfigError, match=r"task system_task: label.codes names unknown code system 'ICD99'"):
        build_samples(system, events, clinical_cohort)
