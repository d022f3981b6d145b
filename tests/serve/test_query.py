"""POST /query through the real app and engine: every kind, the same response as the engine (and so as
`biomm query --json`), questions it cannot answer as 422 with the reason, malformed and oversized bodies."""
from __future__ import annotations

import json

import pytest

from biomm.schema import QueryRequest, QueryResponse
from tests.serve.helpers import READER, TASK, WRITER, auth

H = auth(READER)


def _query(client, body, status=200):
    r = client.post("/query", headers=H, json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_task_answer_with_evidence(client, engine, imaged_subject):
    body = {"kind": "task", "subject": imaged_subject, "task": TASK}
    got = QueryResponse.model_validate(_query(client, body))
    assert got == engine.query(QueryRequest(**body))  # the engine's answer, unchanged by HTTP
    assert got.kind == "task" and got.subject_id == imaged_subject and 0.0 <= got.value <= 1.0
    mods = {m.modality: m for m in got.evidence.modalities}
    # the image counts only when taken by the task's prediction time (the series named is the one used)
    assert mods["imaging"].present == bool(got.evidence.image_series)
    assert all((m.attribution is not None) == m.present for m in mods.values())
    assert got.evidence.top_events and got.evidence.similar_subjects


def test_similar_subjects(client, subjects, imaged_subject):
    got = QueryResponse.model_validate(_query(client, {"kind": "similar", "subject": imaged_subject, "k": 7}))
    neighbours = got.evidence.similar_subjects
    assert len(neighbours) == 7 and imaged_subject not in [n.subject_id for n in neighbours]
    assert set(n.subject_id for n in neighbours) <= set(subjects)
    scores = [n.score for n in neighbours]
    assert scores == sorted(scores, reverse=True)
    by_image = QueryResponse.model_validate(
        _query(client, {"kind": "similar", "subject": imaged_subject, "k": 3, "modality": "imaging"}))
    assert by_image.details["by"] == "imaging" and len(by_image.evidence.similar_subjects) == 3


def test_ask_a_question(client, engine, imaged_subject):
    body = {"kind": "ask", "subject": imaged_subject, "question": "What was the most recent diagnosis?"}
    got = QueryResponse.model_validate(_query(client, body))
    assert got == engine.query(QueryRequest(**body))
    assert got.kind == "ask" and got.subject_id == imaged_subject and isinstance(got.answer, str)
    present = [m for m in got.evidence.modalities if m.present]
    assert {m.modality for m in present} >= {"ehr", "imaging"} and all(m.attribution is not None for m in present)
    assert got.evidence.top_events


@pytest.mark.parametrize("body", [{"kind": "annotate"}, {"kind": "perturb", "gene": "CD3E"}])
def test_cell_kinds_on_a_clinical_model_are_a_clear_422(client, body):
    detail = _query(client, body, 422)["detail"]
    assert "cells" in detail and "model" in detail


@pytest.mark.parametrize("body,reason", [
    ({"kind": "task", "subject": "Pnobody000000000", "task": TASK}, "unknown subject"),
    ({"kind": "similar", "subject": "Pnobody000000000"}, "unknown subject"),
    ({"kind": "task", "subject": "{s}", "task": "no_such_task"}, "unknown task"),
    ({"kind": "similar", "subject": "{s}", "modality": "omics"}, "no omics embeddings"),
])
def test_questions_the_engine_cannot_answer(client, imaged_subject, body, reason):
    body = {k: (v.format(s=imaged_subject) if isinstance(v, str) else v) for k, v in body.items()}
    assert reason in _query(client, body, 422)["detail"]


@pytest.mark.parametrize("raw,where", [
    (b"{not json", "body"), (b"[]", "body"), (b'"task"', "body"), (b"{}", "kind"),
    (b'{"kind": "predict", "subject": "P1"}', "kind"),
    (b'{"kind": "task", "subject": "P1"}', "needs task"),
    (b'{"kind": "similar", "subject": "P1", "k": 0}', "k"),
    (b'{"kind": "similar", "subject": "P1", "k": "ten"}', "k"),
    (b'{"kind": "similar", "subject": "P1", "extra": 1}', "extra"),
    (b'{"kind": "ask", "subject": "P1", "question": "' + b"x" * 501 + b'"}', "question"),
    (b"\xff\xfe\x00", "body"),
])
def test_malformed_bodies_are_4xx_with_a_reason(client, raw, where):
    r = client.post("/query", headers={**H, "Content-Type": "application/json"}, content=raw)
    assert r.status_code == (400 if raw.startswith(b"\xff") else 422), r.text
    detail = r.json()["detail"]
    assert detail and where in json.dumps(detail)
    assert "xxxxxxxxxx" not in r.text  # reasons do not echo the submitted values


def test_wrong_content_type_is_4xx(client):
    r = client.post("/query", headers={**H, "Content-Type": "text/plain"}, content=b"kind=task")
    assert 400 <= r.status_code < 500


def test_oversized_bodies_are_413(client, imaged_subject):
    big = json.dumps({"kind": "ask", "subject": imaged_subject, "question": "x" * 100_000}).encode()
    r = client.post("/query", headers={**H, "Content-Type": "application/json"}, content=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced on the stream
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/query", headers={**H, "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 413


def test_writer_may_query_too(client, imaged_subject):
    r = client.post("/query", headers=auth(WRITER), json={"kind": "similar", "subject": imaged_subject, "k": 2})
    assert r.status_code == 200


def test_model_info(client, engine, subjects):
    info = client.get("/model", headers=H).json()
    assert info["model"] == engine.model_name and TASK in info["tasks"]
    assert info["subjects"] == len(subjects) and set(info["kinds"]) == {"task", "ask", "similar", "annotate", "perturb"}


def test_ask_cites_the_record_entry_behind_the_answer(client, engine, imaged_subject):
    from biomm.heads.qa.questions import NOT_RECORDED, QTYPES

    body = {"kind": "ask", "subject": imaged_subject, "question": "What was the most recent systolic blood pressure?"}
    got = QueryResponse.model_validate(_query(client, body))
    assert got == engine.query(QueryRequest(**body))
    assert got.details["question_type"] in QTYPES and got.details["source"] in ("record", "model")
    recorded = got.details["recorded"]
    if recorded is None:
        assert got.answer in (NOT_RECORDED, "no") or got.details["question_type"] in ("encounter_count",)
    else:  # the first event of the evidence is the one the answer was copied from
        first = got.evidence.top_events[0]
        assert got.details["cited"] >= 1 and (first.code, first.time) == (recorded["code"], recorded["time"])


@pytest.mark.parametrize("body,reason", [
    ({"kind": "ask", "subject": "{s}", "question": "   "}, "empty"),
    ({"kind": "ask", "subject": "{s}", "question": ""}, "needs question"),
    ({"kind": "ask", "subject": "Pnobody000000000", "question": "How old is the patient?"}, "unknown subject"),
])
def test_bad_questions_are_422_with_the_reason(client, imaged_subject, body, reason):
    body = {k: (v.format(s=imaged_subject) if isinstance(v, str) else v) for k, v in body.items()}
    r = client.post("/query", headers=H, json=body)
    assert r.status_code == 422 and reason in json.dumps(r.json()["detail"])
