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
    report, path = run_eval(clinical_model, query_cohort, None, ["death_1y", "heart_failure_onset_3y"], [])
    return report, path


@pytest.fixture(scope="module")
def engine(evaluated, clinical_model, query_cohort):
    return QueryEngine(clinical_model, query_cohort)


def test_eval_reports_biomm_against_baselines(evaluated):
    report, path = evaluated
    r = report["tasks"]["death_1y"]
    assert r["train"]["positives"] > 0 and r["test"]["samples"] > 0
    metrics = r["metrics"]
    assert {"biomm_fused", "biomm_ehr", "bag_of_codes_lr"} <= set(metrics)
    for m in metrics.values():
        assert m["n"] == r["test"]["samples"]
        assert m["auroc"] is None or 0 <= m["auroc"] <= 1
    folder = path.parent
    assert (folder / r["plots"]["roc"]).stat().st_size > 1000
    assert (folder / r["plots"]["calibration"]).exists() and (folder / "umap.png").exists()
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["tasks"]["death_1y"]["metrics"]["bag_of_codes_lr"]["n"] == metrics["bag_of_codes_lr"]["n"]
    assert "| bag_of_codes_lr |" in path.read_text()


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
    assert any(e.code == "SNOMED/185349003" and e.time == pt for e in ev.top_events)
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
