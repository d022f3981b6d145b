"""QA grounded in the record, on the real clinical cohort: questions generated from each patient's own events
(answers checked against the shards), held-out wordings, BM25 retrieval, a tiny stage-2 run, the evaluation
against the majority and retrieval baselines, answers that copy and cite an event, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from biomm.heads.qa.questions import (NOT_RECORDED, QTYPES, WORDINGS, QAStore, format_value, generate_pairs,
                                      wording_split)

STEPS = 150
SBP = "LOINC/8480-6"


def _linkage(cohort: Path) -> Path:
    return cohort.parent / "xrays" / "linkage.csv"


@pytest.fixture(scope="session")
def qa_model_dir(clinical_cohort, project_root, tmp_path_factory) -> Path:
    """The tiny clinical model (EHR + X-ray + notes), trained a few steps and exported. Read-only."""
    from biomm.model.export import export
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    root = tmp_path_factory.mktemp("qa_model")
    cfg = load_train_config(project_root / "configs" / "train" / "clinical_tiny.yaml",
                            ["trainer.max_steps=6", "trainer.val_every_n_steps=6", "trainer.checkpoint_every_n_steps=6"])
    fit(cfg, clinical_cohort, root / "run", progress=False)
    return export(root / "run", root / "model")


@pytest.fixture(scope="session")
def qa_config(clinical_cohort, project_root):
    from biomm.config import load_config
    from biomm.heads.qa.config import QAConfig

    return load_config(QAConfig, project_root / "configs" / "qa" / "tiny.yaml",
                       [f"train.steps={STEPS}", f"questions.xray_labels={_linkage(clinical_cohort)}"])


@pytest.fixture(scope="session")
def qa_store(clinical_cohort) -> QAStore:
    return QAStore(clinical_cohort, xray_label_file=_linkage(clinical_cohort))


@pytest.fixture(scope="session")
def qa_pairs(qa_store):
    train_w, _ = wording_split(1)
    return generate_pairs(qa_store, sorted(qa_store.subjects), train_w)


@pytest.fixture(scope="session")
def qa_trained(qa_model_dir, clinical_cohort, qa_config, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the model with a trained QA head, and the training metrics (with the evaluation)."""
    from biomm.heads.qa.train import train_qa

    model = Path(shutil.copytree(qa_model_dir, tmp_path_factory.mktemp("qa_trained") / "model"))
    return model, train_qa(model, clinical_cohort, qa_config)


def _shard_events(cohort: Path) -> dict[str, list[tuple]]:
    rows = duckdb.sql(f"SELECT subject_id, time, code, numeric_value, unit FROM "
                      f"read_parquet('{cohort}/ehr/events/*.parquet') ORDER BY subject_id, time, code").fetchall()
    out: dict[str, list[tuple]] = {}
    for sid, t, code, value, unit in rows:
        out.setdefault(sid, []).append((str(t).replace(" ", "T") if t else "", code, value, unit))
    return out


# ---------------------------------------------------------------------- questions from the record
def test_questions_cover_the_types_and_answers_copy_the_events(qa_pairs, clinical_cohort):
    assert set(QTYPES) - {p.qtype for p in qa_pairs} <= {"allergy"}  # the 60-patient cohort may have no allergy
    shards = _shard_events(clinical_cohort)
    checked = {"value": 0, "date": 0, "not_recorded": 0}
    for p in qa_pairs:
        mine = shards.get(p.subject_id, [])
        if p.answer == NOT_RECORDED or (p.answer == "no" and p.qtype != "imaging_finding"):
            assert not p.events and p.gold_code is None
            if p.code:  # a question about a code the patient does not have (of that kind)
                assert p.qtype in ("diagnosis", "allergy") or all(
                    c != p.code or (p.qtype == "latest_value" and v is None) or p.qtype == "trend"
                    for _, c, v, _ in mine)
                checked["not_recorded"] += 1
            continue
        for ev in p.events:  # every cited event is a real event of the patient's shards (time to the second)
            if not ev["code"].startswith("DCM/"):
                assert any(t == ev["time"] and c == ev["code"] for t, c, _, _ in mine), (p, ev)
        if p.qtype == "latest_value":
            latest = [r for r in mine if r[1] == p.code and r[2] is not None][-1]
            assert p.answer == f"{format_value(latest[2])}{' ' + latest[3] if latest[3] else ''} on {latest[0][:10]}"
            assert p.events[0]["value"] == pytest.approx(latest[2]) and p.events[0]["unit"] == latest[3]
            checked["value"] += 1
        if p.qtype in ("diagnosis_date", "procedure", "immunization"):
            assert p.answer == p.events[0]["time"][:10]
            checked["date"] += 1
    assert min(checked.values()) > 20, checked


def test_trend_age_and_counts_are_rendered_from_the_events(qa_pairs, qa_store):
    from datetime import date

    for p in qa_pairs:
        if p.qtype == "trend" and p.answer != NOT_RECORDED:
            values = [e["value"] for e in p.events]
            assert 2 <= len(values) <= 3
            change = (values[-1] - values[0]) / max(abs(values[0]), 1e-6)
            assert p.answer == ("rising" if change > 0.03 else "falling" if change < -0.03 else "stable")
        if p.qtype == "age":
            born = date.fromisoformat(p.events[0]["time"][:10])
            ref = date.fromisoformat(str(np.datetime64(int(round(p.time * 86400)), "s"))[:10])
            assert p.answer == f"{ref.year - born.year - ((ref.month, ref.day) < (born.month, born.day))} years"
        if p.qtype == "encounter_count":
            n = int(p.answer.split()[0])
            assert n == len(p.events)
            assert all(p.time - 365 < (np.datetime64(e["time"]) - np.datetime64("1970-01-01T00:00:00")
                                       ).astype("timedelta64[s]").astype(float) / 86400 <= p.time + 1e-6
                       for e in p.events)


def test_held_out_wordings_are_never_trained_on(qa_store, qa_config):
    from biomm.heads.qa.train import training_pairs

    train_w, held_w = wording_split(1)
    pairs = training_pairs(qa_store, qa_config)
    assert pairs and all(p.wording in train_w[p.qtype] for p in pairs)
    assert {p.subject_id for p in pairs} <= {s for s, sp in qa_store.split_of.items() if sp == "train"}
    held = generate_pairs(qa_store, sorted(qa_store.subjects)[:10], held_w)
    assert held and all(p.wording == len(WORDINGS[p.qtype]) - 1 for p in held)


def test_bm25_retrieves_the_fact_behind_the_answer(qa_pairs, qa_store):
    from biomm.heads.qa.reader import cohort_retriever

    retriever = cohort_retriever(qa_store)
    assert retriever.idf("blood") < retriever.idf("systolic")  # cohort-wide document frequencies
    hits = total = 0
    for p in qa_pairs:
        if p.gold_code is None:
            continue
        cands = retriever.retrieve(p.question, qa_store.facts(p.subject_id, p.time), 8)
        assert [c.fact.kind for c in cands[:2]] == ["birth", "sex"] or cands[0].fact.kind in ("birth", "sex")
        total += 1
        hits += any(c.fact.code == p.gold_code for c in cands)
    assert hits / total > 0.95


# ---------------------------------------------------------------------- training and evaluation
def test_training_lowers_the_loss_and_saves_the_head(qa_trained):
    model, metrics = qa_trained
    assert metrics["loss_after"] < 0.5 * metrics["loss_before"]
    head = model / "heads" / "qa"
    for name in ("config.json", "head.safetensors", "lm/config.json", "tokenizer/tokenizer.json", "metrics.json"):
        assert (head / name).exists(), name


def test_eval_reports_held_out_patients_and_wordings_against_the_baselines(qa_trained, clinical_cohort):
    from biomm.heads.qa.evaluate import evaluate_qa

    model, metrics = qa_trained
    ev = evaluate_qa(model, clinical_cohort, "test", measure_latency=False)
    for name in ("held_out_patients", "held_out_wordings"):
        rep = ev[name]
        for key in ("model", "majority", "retrieval"):
            assert "overall" in rep[key] and "latest_value" in rep[key]
            for s in rep[key].values():
                assert 0.0 <= s["em"] <= s["f1"] + 1e-9 <= 1.0 + 1e-9 and s["n"] > 0
        assert 0.0 <= rep["evidence_precision"]["precision"] <= 1.0 and rep["not_recorded"]["model"]["n"] > 0
        lo, hi = rep["ci95"]["model_em"]
        assert lo <= rep["model"]["overall"]["em"] <= hi
    # the saved head reproduces the evaluation made at the end of training
    assert ev["held_out_patients"]["model"] == metrics["eval"]["held_out_patients"]["model"]
    # grounded answers beat the majority answer per question type on held-out patients, even after a short run
    rep = ev["held_out_patients"]
    assert rep["model"]["overall"]["em"] > rep["majority"]["overall"]["em"]
    assert metrics["eval"]["latency"]["median_ms"] > 0


def test_metrics():
    from biomm.heads.qa.metrics import (bootstrap_ci, evidence_precision, exact_match, majority_answers,
                                        not_recorded_f1, token_f1)

    assert exact_match("113 mm[hg]", "113 mm[Hg]") == 1.0
    assert token_f1("120 mm[Hg]", "113 mm[Hg]") == pytest.approx(0.8)
    assert token_f1("yes", "no") == 0.0
    assert majority_answers(["a", "a", "a"], ["no", "yes", "yes"]) == {"a": "yes"}
    ev = {"code": "X", "time": "2020-01-01T00:00:00"}
    assert evidence_precision([[ev], [], [ev]], [[ev], [], []]) == {"precision": 0.5, "n": 2}
    nr = not_recorded_f1(["not recorded", "5", "not recorded"], ["not recorded", "not recorded", "yes"])
    assert nr["precision"] == 0.5 and nr["recall"] == 0.5 and nr["f1"] == 0.5
    lo, hi = bootstrap_ci([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "c"])
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0


def test_any_causal_lm_plugs_in(qa_store, qa_config):
    """A tiny random Llama reads the same sequence and trains the same heads."""
    import torch

    from biomm.heads.qa.module import QAHead
    from biomm.heads.qa.reader import cohort_retriever, prepare

    cfg = qa_config.model_copy(update={"lm": qa_config.lm.model_copy(update={"kind": "llama", "vocab_size": 300})})
    head = QAHead.build(cfg, ["what was the most recent systolic blood pressure", "observation : systolic"], 32)
    subject = next(s for s in sorted(qa_store.subjects) if qa_store.reference_time(s) is not None)
    prep = prepare(head, qa_store, cohort_retriever(qa_store), subject, qa_store.reference_time(subject),
                   "What was the most recent systolic blood pressure?")
    fused, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    out = head(fused, mask, [prep.example] * 2)
    assert out.intent.shape == (2, len(QTYPES)) and out.pointer.shape == (2, len(prep.candidates) + 1)
    prep.example.intent, prep.example.pointer = 3, len(prep.candidates)
    head.loss(fused, mask, [prep.example] * 2).backward()
    assert head.marks.grad is not None and head.feature_head.weight.grad is not None


# ---------------------------------------------------------------------- answers with evidence
def test_answer_copies_and_cites_the_event(qa_trained, clinical_cohort, qa_store):
    import biomm
    from biomm.heads.qa.service import QAService

    model, _ = qa_trained
    service = QAService(biomm.load(model), clinical_cohort)
    sid = next(s for s in sorted(qa_store.subjects) if qa_store.xrays.get(s) and any(
        e.code == SBP for e in qa_store.events.get(s, ())))
    r = service.answer(sid, "What was the most recent systolic blood pressure?")
    assert r.kind == "ask" and r.subject_id == sid
    assert set(r.details) >= {"question_type", "question_type_confidence", "reference_time", "source", "recorded",
                              "reference_answer", "cited", "candidates", "evidence_confidence"}
    if r.details["question_type"] == "latest_value" and r.details["recorded"]:
        cited = r.evidence.top_events[0]
        # the value, unit and date of the answer are the cited event's
        assert r.answer == f"{format_value(cited.value)} {cited.unit} on {cited.time[:10]}"
        assert r.value == pytest.approx(cited.value) and r.details["cited"] == 1
        assert any(e.code == cited.code and abs(e.value - cited.value) < 1e-6
                   for e in qa_store.events[sid] if e.value is not None)
    mods = {m.modality: m for m in r.evidence.modalities}
    assert mods["ehr"].present and mods["imaging"].present
    assert all(isinstance(m.attribution, float) for m in mods.values() if m.present)
    x = service.answer(sid, "Does the chest X-ray show pneumonia?")
    assert x.evidence.image_series
    assert json.loads(x.model_dump_json())["evidence"]["modalities"]


def test_bad_input_is_a_clear_answer_or_error(qa_trained, qa_model_dir, clinical_cohort, qa_store):
    import biomm
    from biomm.heads.qa.module import load_qa_head
    from biomm.heads.qa.service import QAService, max_question_length
    from biomm.schema import QueryError

    model, _ = qa_trained
    service = QAService(biomm.load(model), clinical_cohort)
    sid = next(s for s in sorted(qa_store.subjects) if s not in qa_store.xrays and qa_store.reference_time(s))
    with pytest.raises(QueryError, match="unknown subject 'P-nobody'"):
        service.answer("P-nobody", "Has the patient been diagnosed with hypertension?")
    with pytest.raises(QueryError, match="empty"):
        service.answer(sid, "   ")
    with pytest.raises(QueryError, match="characters"):
        service.answer(sid, "x" * (max_question_length() + 1))
    assert max_question_length() <= 1000
    r = service.answer(sid, "Does the chest X-ray show pneumonia?")  # no imaging for this subject
    assert not r.evidence.image_series and not {m.modality: m for m in r.evidence.modalities}["imaging"].present
    if r.details["question_type"] == "imaging_finding":
        assert r.answer == NOT_RECORDED and any("no chest X-ray" in w for w in r.warnings)
    # a code the cohort has never seen: never an invented value
    r = service.answer(sid, "What was the most recent zyxwvut level?")
    assert r.answer == NOT_RECORDED or r.details["recorded"] is not None
    with pytest.raises(QueryError, match="has no QA head"):
        load_qa_head(qa_model_dir)


def test_cli(qa_trained, clinical_cohort, tmp_path):
    from typer.testing import CliRunner

    from biomm.cli import app
    from biomm.commands import command_modules
    from biomm.pipeline import collect_steps

    model, _ = qa_trained
    runner = CliRunner()
    res = runner.invoke(app, ["qa", "eval", str(model), "--cohort", str(clinical_cohort), "--split", "val"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["split"] == "val" and set(out["held_out_patients"]["model"]) >= {"overall"}
    res = runner.invoke(app, ["qa", "train", str(model), "--cohort", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no cohort" in res.output
    assert "train_qa" in collect_steps(command_modules())
