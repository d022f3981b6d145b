"""QA head on the real clinical cohort: pairs from the store (checked against the events and the X-ray linkage,
nothing after the reference time), a tiny stage-2 run, EM/F1 vs baselines, answers with evidence, bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from biomm.heads.qa.questions import NO_SBP, NO_XRAY, QTYPES, SBP, QAStore, diagnosis_answer, generate_pairs, xray_answer

STEPS = 150


def _linkage(cohort: Path) -> Path:
    return cohort.parent / "xrays" / "linkage.csv"


@pytest.fixture(scope="session")
def qa_model_dir(clinical_cohort, project_root, tmp_path_factory) -> Path:
    """The tiny clinical model (EHR + X-ray + notes), trained a few steps and exported. Read-only."""
    from biomm.model.export import export
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

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
def qa_trained(qa_model_dir, clinical_cohort, qa_config, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the model with a trained QA head, and the training metrics."""
    from biomm.heads.qa.train import train_qa

    model = Path(shutil.copytree(qa_model_dir, tmp_path_factory.mktemp("qa_trained") / "model"))
    return model, train_qa(model, clinical_cohort, qa_config)


def _events(cohort: Path) -> duckdb.DuckDBPyRelation:
    return duckdb.sql(f"SELECT subject_id, time, code, numeric_value FROM read_parquet('{cohort}/ehr/events/*.parquet')")


def _day(ts) -> float:
    return (np.datetime64(ts, "us") - np.datetime64("1970-01-01T00:00:00", "us")).astype(np.float64) / 86_400e6


# ---------------------------------------------------------------------- question generation
def test_pairs_answers_match_the_events(qa_store, clinical_cohort):
    pairs = generate_pairs(qa_store, sorted(qa_store.subjects), reference_times=2, diagnoses_per_subject=2)
    assert {p.qtype for p in pairs} == set(QTYPES)
    rows = _events(clinical_cohort).fetchall()
    by_subject: dict[str, list] = {}
    for sid, t, code, value in rows:
        by_subject.setdefault(sid, []).append((_day(t) if t else -np.inf, code, value))
    checked = {"yes": 0, "no": 0, "sbp": 0, "no_sbp": 0}
    for p in pairs:
        seen = [e for e in by_subject[p.subject_id] if e[0] <= p.time]
        for ev in p.events:  # every record behind an answer is on record by the reference time
            assert ev["time"][:10] <= str(np.datetime64(int(p.time * 86400), "s"))[:10]
        if p.qtype == "diagnosis":
            on_record = any(code == p.code for _, code, _ in seen)
            assert p.answer == ("yes" if on_record else "no"), p
            checked[p.answer] += 1
        elif p.qtype == "systolic_bp":
            sbp = [(t, v) for t, code, v in seen if code == SBP and v is not None]
            if sbp:
                assert p.answer == f"{round(max(sbp, key=lambda x: x[0])[1])} mm[Hg]", p
                checked["sbp"] += 1
            else:
                assert p.answer == NO_SBP
                checked["no_sbp"] += 1
    assert checked["yes"] == checked["no"] > 50  # balanced diagnosis questions
    assert checked["sbp"] > 50


def test_no_future_leakage(qa_store):
    """A diagnosis is 'no' the day before its first record and 'yes' from then on; an X-ray is not seen before its date."""
    flips = 0
    for sid in sorted(qa_store.subjects)[:30]:
        for code, first in qa_store.diagnoses(sid, np.inf).items():
            assert diagnosis_answer(qa_store, sid, first - 1.0, code)[0] == "no"
            assert diagnosis_answer(qa_store, sid, first, code)[0] == "yes"
            flips += 1
    assert flips > 30
    with_xray = [s for s in sorted(qa_store.subjects) if qa_store.xrays.get(s)]
    for sid in with_xray:
        first = qa_store.xrays[sid][0]
        assert xray_answer(qa_store, sid, first.day - 1.0)[0] == NO_XRAY
        same_day = {x.series_uid for x in qa_store.xrays[sid] if x.day == first.day}
        assert xray_answer(qa_store, sid, first.day + 0.5)[2][0] in same_day


def test_xray_answers_follow_the_linkage_and_say_when_there_is_none(qa_store, clinical_cohort):
    from biomm.store.cohort import Cohort

    with open(_linkage(clinical_cohort), newline="") as fh:
        rows = list(csv.DictReader(fh))
    with Cohort(clinical_cohort, create=False, read_only=True, deid_key="test-key") as c:  # the ingest key
        truth = {c.deid.uid(r["study_uid"]): int(r["label"]) for r in rows}
    xrays = [x for xs in qa_store.xrays.values() for x in xs]
    assert len(xrays) == len(rows) and all(x.label == truth[x.study_uid] for x in xrays)
    pairs = generate_pairs(qa_store, sorted(qa_store.subjects))
    xray_pairs = [p for p in pairs if p.qtype == "chest_xray"]
    without = [p for p in xray_pairs if p.subject_id not in qa_store.xrays]
    assert without and all(p.answer == NO_XRAY and not p.image_series for p in without)
    labelled = [p for p in xray_pairs if p.answer in ("yes", "no")]
    assert labelled and all(p.image_series for p in labelled)
    for p in labelled:
        x = next(x for x in qa_store.xrays[p.subject_id] if x.series_uid == p.image_series[0])
        assert p.answer == ("yes" if truth[x.study_uid] else "no")


# ---------------------------------------------------------------------- training and evaluation
def test_training_lowers_the_loss_and_saves_the_head(qa_trained):
    model, metrics = qa_trained
    assert metrics["loss_after"]["train"] < 0.5 * metrics["loss_before"]["train"]
    assert metrics["loss_after"]["test"] < metrics["loss_before"]["test"]
    head = model / "heads" / "qa"
    for name in ("config.json", "projector.safetensors", "lm/config.json", "tokenizer/tokenizer.json", "metrics.json"):
        assert (head / name).exists(), name


def test_eval_reports_em_f1_per_type_against_the_baselines(qa_trained, clinical_cohort):
    from biomm.heads.qa.train import evaluate_qa

    model, metrics = qa_trained
    ev = evaluate_qa(model, clinical_cohort, "test")
    for key in ("model", "baseline", "baseline_question"):
        assert set(ev[key]) == {"overall", *QTYPES}
        for scores in ev[key].values():
            assert 0.0 <= scores["em"] <= scores["f1"] + 1e-9 <= 1.0 + 1e-9 and scores["n"] > 0
    assert ev["baseline_answers"]["diagnosis"] in ("yes", "no")
    # the saved head reproduces the evaluation made at the end of training
    assert ev["model"] == metrics["eval"]["model"] and ev["n"] == metrics["eval"]["n"]
    # chest X-ray presence is in the fused tokens: the model beats the majority answer there
    assert ev["model"]["chest_xray"]["em"] > ev["baseline"]["chest_xray"]["em"]


def test_metrics():
    from biomm.heads.qa.metrics import exact_match, majority_answers, token_f1

    assert exact_match("113 mm[hg]", "113 mm[Hg]") == 1.0
    assert token_f1("120 mm[Hg]", "113 mm[Hg]") == pytest.approx(0.8)
    assert token_f1("yes", "no") == 0.0
    assert majority_answers(["a", "a", "a"], ["no", "yes", "yes"]) == {"a": "yes"}


# ---------------------------------------------------------------------- answers with evidence
def test_answer_with_evidence(qa_trained, clinical_cohort, qa_store):
    import biomm
    from biomm.heads.qa.service import QAService

    model, _ = qa_trained
    service = QAService(biomm.load(model), clinical_cohort)
    sid = next(s for s in sorted(qa_store.subjects) if qa_store.xrays.get(s) and qa_store.latest(s, SBP, np.inf))
    r = service.answer(sid, "What was the most recent systolic blood pressure?")
    assert r.kind == "ask" and r.subject_id == sid and r.answer
    when = qa_store.last_time(sid)
    hit = qa_store.latest(sid, SBP, when)
    assert r.details["reference_answer"] == f"{round(hit['value'])} mm[Hg]"
    assert r.evidence.top_events[0].code == SBP and r.evidence.top_events[0].value == pytest.approx(hit["value"])
    mods = {m.modality: m for m in r.evidence.modalities}
    assert mods["ehr"].present and mods["imaging"].present
    assert all(isinstance(m.attribution, float) for m in mods.values() if m.present)
    assert r.evidence.image_series  # the X-ray the model saw
    x = service.answer(sid, "Does the chest X-ray show pneumonia?")
    assert x.details["reference_answer"] in ("yes", "no") and x.evidence.image_series
    assert json.loads(x.model_dump_json())["evidence"]["modalities"]


def test_answer_without_the_modality_says_so(qa_trained, clinical_cohort, qa_store):
    from biomm.heads.qa.service import answer

    model, _ = qa_trained
    sid = next(s for s in sorted(qa_store.subjects) if s not in qa_store.xrays)
    r = answer(model, clinical_cohort, sid, "Does the chest X-ray show pneumonia?")
    assert r.answer == NO_XRAY and r.details["source"] == "store" and not r.evidence.image_series
    assert not {m.modality: m for m in r.evidence.modalities}["imaging"].present


def test_bad_input(qa_trained, qa_model_dir, clinical_cohort):
    from biomm.heads.qa.module import load_qa_head
    from biomm.heads.qa.service import answer
    from biomm.schema import QueryError

    model, _ = qa_trained
    with pytest.raises(QueryError, match="unknown subject 'P-nobody'"):
        answer(model, clinical_cohort, "P-nobody", "Has the patient been diagnosed with hypertension?")
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
    assert out["split"] == "val" and set(out["model"]) >= {"overall", "diagnosis"}
    res = runner.invoke(app, ["qa", "train", str(model), "--cohort", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no cohort" in res.output
    assert "train_qa" in collect_steps(command_modules())
