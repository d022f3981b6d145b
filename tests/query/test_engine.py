"""The query engine, `biomm eval`, `biomm embed` and `biomm query` on a real tiny clinical model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from biomm.cli import app
from biomm.eval.run import run_eval
from biomm.query.engine import QueryEngine
from biomm.query.index import VectorIndex
from biomm.schema import QueryError, QueryRequest, QueryResponse

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(clinical_model, query_cohort):
    from biomm.eval.clinical import QUICK

    report, path = run_eval(clinical_model, query_cohort, None, ["death_1y", "heart_failure_onset_3y"], [], QUICK)
    return report, path


@pytest.fixture(scope="module")
def engine(evaluated, clinical_model, query_cohort):
    return QueryEngine(clinical_model, query_cohort)


def test_eval_reports_biomm_against_baselines(evaluated):
    report, path = evaluated
    r = report["tasks"]["death_1y"]
    assert r["samples"]["positives"] > 0 and r["protocol"]["repeats"] == 1
    rows = r["rows"]
    assert {"biomm_fused", "biomm_ehr", "bag_of_codes_lr", "count_gbm", "hybrid"} <= set(rows)
    for m in rows.values():
        f = m["full"]
        assert 0 <= f["auroc"] <= 1 and f["auroc_low"] <= f["auroc"] <= f["auroc_high"]
        assert set(m["few_shot"]) <= {"1", "4", "16"}
    folder = path.parent
    assert (folder / r["plots"]["few_shot"]).stat().st_size > 1000
    assert (folder / "few_shot_mean.png").exists() and (folder / "tsne.png").exists()
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["summary"]["rows"]["bag_of_codes_lr"]["full"]["auroc"] is not None
    assert "targets" in saved["summary"]
    text = path.read_text()
    assert "| bag_of_codes_lr |" in text and "| count_gbm |" in text and "Mean over tasks" in text


def test_events_after_the_prediction_time_never_reach_the_model(engine):
    """Plant other events after the prediction time: the fused embedding does not change."""
    from biomm.data.samples import Sample
    from biomm.heads.clinical import embed_samples

    subject = engine.richest_subject()
    events = engine.dm.events
    s, e = events.subjects[subject]
    pt = float(events.times[(s + e) // 2])
    before = embed_samples(engine.loaded.model, engine.dm.collate, [Sample(subject, pt)]).fused
    a, b = events.span(subject, pt)
    saved = events.codes[b:e].copy(), events.values[b:e].copy(), events.value_bins[b:e].copy()
    try:
        events.codes[b:e] = 5
        events.values[b:e] = 42.0
        events.value_bins[b:e] = 1
        after = embed_samples(engine.loaded.model, engine.dm.collate, [Sample(subject, pt)]).fused
        changed = embed_samples(engine.loaded.model, engine.dm.collate, [Sample(subject, float(events.times[e - 1]))]).fused
    finally:
        events.codes[b:e], events.values[b:e], events.value_bins[b:e] = saved
    assert b < e
    np.testing.assert_array_equal(after, before)
    assert not np.allclose(changed, before)  # the planted events do reach a later prediction time


def test_task_query_has_probability_and_evidence(engine):
    subject = engine.richest_subject()
    resp = engine.query(QueryRequest(kind="task", subject=subject, task="death_1y"))
    assert 0 <= resp.value <= 1 and resp.subject_id == subject
    ev = resp.evidence
    assert {m.modality for m in ev.modalities} == {"ehr", "imaging", "text"}
    assert all(m.attribution is not None for m in ev.modalities if m.present)
    assert ev.top_events and len(ev.similar_subjects) == 5
    imaging = next(m for m in ev.modalities if m.modality == "imaging")
    assert bool(ev.image_series) == imaging.present  # the series named is the one the model saw
    pt = resp.details["prediction_time"]
    assert all(e.time <= pt for e in ev.top_events)
    # the prediction time comes from the task (a wellness visit), never the outcome itself
    assert all(e.code != "MEDS_DEATH" for e in ev.top_events)
    # events ranked by their gradient x input attribution to this prediction, not by recency
    assert resp.details["evidence_ranking"].startswith("by gradient x input")
    attr = resp.details["event_attributions"]
    assert len(attr) == len(ev.top_events) and attr == sorted(attr, reverse=True)
    QueryResponse.model_validate_json(resp.model_dump_json())


def test_a_task_without_a_fitted_head_says_how_to_fit_it(engine):
    with pytest.raises(QueryError, match="no head for task hypertension_onset_3y: fit it with `biomm eval"):
        engine.query(QueryRequest(kind="task", subject=engine.subjects[0], task="hypertension_onset_3y"))


def test_similar_subjects_by_fused_and_by_modality(engine):
    subject = engine.richest_subject()
    resp = engine.query(QueryRequest(kind="similar", subject=subject, k=7))
    ids = [n.subject_id for n in resp.evidence.similar_subjects]
    assert len(ids) == 7 and subject not in ids and len(set(ids)) == 7
    scores = [n.score for n in resp.evidence.similar_subjects]
    assert scores == sorted(scores, reverse=True)
    by_image = engine.query(QueryRequest(kind="similar", subject=subject, k=3, modality="imaging"))
    assert all(n.subject_id in engine.indexes["imaging"] for n in by_image.evidence.similar_subjects)


def test_similar_subjects_say_what_they_share(engine):
    """Each neighbour lists the diagnoses / procedures it has in common with the subject, rarest first."""
    subject = engine.richest_subject()
    resp = engine.query(QueryRequest(kind="similar", subject=subject, k=5))
    ev = engine.events

    def findings(sid):
        s, e = ev.subjects[sid]
        return {c for c in ev.codes_text[s:e].tolist() if c.startswith("SNOMED/")}

    freq = engine.caches.code_frequency
    assert freq and all(1 <= n <= len(ev.subjects) for n in freq.values())
    for n in resp.evidence.similar_subjects:
        common = findings(subject) & findings(n.subject_id)
        names = [engine.displays.get(c, c) for c in sorted(common, key=lambda c: (freq[c], c))[:3]]
        assert n.shared == names
    assert any(n.shared for n in resp.evidence.similar_subjects)


def test_bad_queries_get_clear_errors(engine):
    with pytest.raises(QueryError, match="unknown subject 'nobody'"):
        engine.query(QueryRequest(kind="task", subject="nobody", task="death_1y"))
    with pytest.raises(QueryError, match="unknown task 'flu'; known: "):
        engine.query(QueryRequest(kind="task", subject=engine.subjects[0], task="flu"))
    with pytest.raises(QueryError, match="is a patients model; that query needs a virtual-cell"):
        engine.query(QueryRequest(kind="perturb", gene="CD3E"))
    with pytest.raises(ValueError, match="needs subject"):
        QueryRequest(kind="similar")
    no_imaging = next(s for s, p in zip(engine.subjects, engine.embeddings.present["imaging"]) if not p)
    with pytest.raises(QueryError, match="has no imaging data"):
        engine.query(QueryRequest(kind="similar", subject=no_imaging, modality="imaging"))


def test_faiss_and_exact_index_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    ids = [f"s{i}" for i in range(500)]
    flat, exact = VectorIndex(x, ids, "faiss-flat"), VectorIndex(x, ids, "exact")
    s1, r1 = flat.search(x[:20], 5)
    s2, r2 = exact.search(x[:20], 5)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert flat.neighbours("s3", 4) == exact.neighbours("s3", 4) or \
        [a for a, _ in flat.neighbours("s3", 4)] == [a for a, _ in exact.neighbours("s3", 4)]


def test_embed_writes_the_store_and_the_index_the_engine_reuses(clinical_model, query_cohort, evaluated):
    res = runner.invoke(app, ["embed", str(clinical_model), "--cohort", str(query_cohort), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    with np.load(info["embeddings"]) as z:
        assert z["fused"].shape[0] == info["subjects"] and "mod_imaging" in z.files
    engine = QueryEngine(clinical_model, query_cohort)
    assert engine.indexes["fused"].ids == engine.embeddings.subject_ids
    assert engine.indexes["fused"].backend == info["backend"]


def test_query_cli_json_and_errors(clinical_model, query_cohort, evaluated):
    engine = QueryEngine(clinical_model, query_cohort)
    subject = engine.richest_subject()
    res = runner.invoke(app, ["query", str(clinical_model), "--cohort", str(query_cohort), "--subject", subject,
                              "--task", "death_1y", "--json"])
    assert res.exit_code == 0, res.output
    QueryResponse.model_validate_json(res.stdout)
    res = runner.invoke(app, ["query", str(clinical_model), "--cohort", str(query_cohort), "--similar", "nobody"])
    assert res.exit_code == 2 and "unknown subject 'nobody'" in res.output
    res = runner.invoke(app, ["query", str(clinical_model), "--cohort", str(query_cohort), "--similar", subject, "--k", "3"])
    assert res.exit_code == 0 and "3 most similar subjects" in res.output


def test_a_model_that_does_not_match_the_cohorts_vocabulary_is_refused(clinical_model, query_cohort, tmp_path):
    """A cohort coded differently (here: the same patients with every code renamed) is not silently read as <unk>."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from biomm.config import ConfigError

    cohort = tmp_path / "other"
    shutil.copytree(query_cohort, cohort)
    for shard in (cohort / "ehr" / "events").glob("*.parquet"):
        t = pq.read_table(shard)
        t = t.set_column(t.schema.get_field_index("code"), "code", pc.binary_join_element_wise("OTHER/", t["code"], ""))
        pq.write_table(t, shard)
    with pytest.raises(ConfigError, match=r"does not match cohort .*: only 0% of its events have a known code"):
        QueryEngine(clinical_model, cohort)


def test_python_api_query(clinical_model, query_cohort, evaluated):
    import biomm

    m = biomm.load(clinical_model)
    subject = m.embed(query_cohort).subject_ids[0]
    resp = m.query(query_cohort, kind="similar", subject=subject, k=4)
    assert resp.kind == "similar" and len(resp.evidence.similar_subjects) == 4
    again = m.query(query_cohort, QueryRequest(kind="task", subject=subject, task="death_1y"))
    assert again.kind == "task" and again.details["task"] == "death_1y"


def test_caches_belong_to_the_engine_and_a_refresh_empties_them(engine):
    subject = engine.richest_subject()
    first = engine.query(QueryRequest(kind="task", subject=subject, task="death_1y"))
    assert engine.caches.occlusions and engine.caches.heads
    assert engine.query(QueryRequest(kind="task", subject=subject, task="death_1y")) == first  # from the cache
    engine.refresh()
    assert not engine.caches.occlusions and not engine.caches.heads and engine.caches.qa is None
    assert engine.query(QueryRequest(kind="task", subject=subject, task="death_1y")) == first
