"""Every answer writes an event's time the same way (biomm.data.ehr.day_to_iso): the evidence of a task
query and of a QA answer name the same event at the same second."""
from __future__ import annotations

from datetime import datetime

from biomm.schema import QueryRequest
from tests.serve.helpers import TASK

SBP_QUESTION = "What was the most recent systolic blood pressure?"


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_task_and_qa_evidence_agree_on_event_times(engine, subjects):
    matched = 0
    for subject in subjects[:20]:
        task = engine.query(QueryRequest(kind="task", subject=subject, task=TASK))
        qa = engine.query(QueryRequest(kind="ask", subject=subject, question=SBP_QUESTION))
        for a in task.evidence.top_events:
            for b in qa.evidence.top_events:
                if a.code == b.code and a.time and b.time and abs(_seconds(a.time) - _seconds(b.time)) < 120:
                    assert a.time == b.time, (subject, a, b)  # one event, one time string
                    matched += 1
        if matched >= 5:
            break
    assert matched >= 5, "no event appears in the evidence of both a task query and a QA answer"
