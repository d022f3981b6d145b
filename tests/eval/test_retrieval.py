"""Retrieval on held-out subjects: ranks with ties, intervals, chance, the BM25 and CCA baselines, and
the report on a real (tiny) clinical model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biomm.eval.retrieval import (
    bm25_scores,
    cca_scores,
    chance,
    evaluate_retrieval,
    hit_and_rank,
    retrieval_markdown,
    retrieval_metrics,
)

PROJECT = Path(__file__).resolve().parents[2]


def test_perfect_scores_retrieve_everything_first():
    m = retrieval_metrics(np.eye(5) + 0.01, n_boot=50)
    assert m["recall@1"]["value"] == 1.0 and m["median_rank"]["value"] == 1.0
    assert m["recall@1"]["ci"] == [1.0, 1.0]


def test_ties_count_as_broken_at_random():
    hits, ranks = hit_and_rank(np.zeros((4, 4)), (1, 2))
    assert np.allclose(hits[:, 0], 0.25) and np.allclose(hits[:, 1], 0.5)
    assert np.allclose(ranks, 2.5)  # the mean rank among 4 tied candidates


def test_chance_level():
    assert chance(20) == {"recall@1": 0.05, "recall@5": 0.25, "recall@10": 0.5, "median_rank": 10.5}
    assert chance(3)["recall@5"] == 1.0


def test_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    m = retrieval_metrics(rng.normal(size=(40, 40)) + 1.5 * np.eye(40), n_boot=200)
    for key in ("recall@1", "recall@10", "median_rank"):
        lo, hi = m[key]["ci"]
        assert lo <= m[key]["value"] <= hi


def test_bm25_finds_the_document_that_shares_the_rare_words():
    docs = ["hypertension essential", "sprain of ankle", "acute bronchitis", "sprain of wrist"]
    s = bm25_scores(["care plan for sprain of ankle", "bronchitis"], docs)
    assert s[0].argmax() == 1 and s[1].argmax() == 2
    assert s[1, 0] == 0.0


def test_cca_recovers_a_shared_signal():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(160, 3))
    a = z @ rng.normal(size=(3, 20)) + 0.3 * rng.normal(size=(160, 20))
    b = z @ rng.normal(size=(3, 15)) + 0.3 * rng.normal(size=(160, 15))
    scores = cca_scores(a[:120], b[:120], a[120:], b[120:], dims=10, components=3)
    assert retrieval_metrics(scores, n_boot=20)["recall@5"]["value"] > 3 * chance(40)["recall@5"]


@pytest.fixture(scope="module")
def tiny_model(clinical_cohort, tmp_path_factory):
    from biomm.model.export import export
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    root = tmp_path_factory.mktemp("retrieval")
    cfg = load_train_config(PROJECT / "configs" / "train" / "clinical_tiny.yaml",
                            ["trainer.max_steps=3", "trainer.val_every_n_steps=3", "trainer.checkpoint_every_n_steps=3"])
    fit(cfg, clinical_cohort, root / "run", progress=False)
    return export(root / "run", root / "model")


def test_report_on_a_real_cohort(tiny_model, clinical_cohort, tmp_path):
    from biomm.model.bundle import load

    report = evaluate_retrieval(load(tiny_model), clinical_cohort, tmp_path, n_boot=50)
    pairs = report["pairs"]
    assert "ehr->text" in pairs and "text->ehr" in pairs
    r = pairs["ehr->text"]
    assert r["n"] >= 2 and r["chance"]["recall@1"] == pytest.approx(1 / r["n"])
    assert {"biomm", "bm25", "cca"} <= set(r)  # both sides have text: BM25; CCA fitted on training subjects
    for method in ("biomm", "bm25", "cca"):
        assert 0 <= r[method]["recall@1"]["value"] <= r[method]["recall@10"]["value"] <= 1
    assert all("bm25" not in v for p, v in pairs.items() if "imaging" in p)  # no text on the image side
    assert "bm25_whole_notes" in r  # BM25 reads the notes as the model does; the uncut figure beside it
    assert (tmp_path / report["plot"]).exists()
    md = retrieval_markdown(report)
    assert "| ehr->text |" in md and "bm25" in md and "bm25_whole_notes" in md and "chance" in md


def test_bm25_reads_the_notes_cut_where_the_model_cuts_them(tiny_model, clinical_cohort):
    """The same input for both sides: the notes BM25 scores are the decoded word pieces the text adapter reads."""
    from biomm.eval.retrieval import notes_text
    from biomm.model.bundle import load

    loaded = load(tiny_model)
    dm = loaded.datamodule(clinical_cohort)
    src = dm.sources["text"]
    samples = [s for s in dm.samples["all"] if src.notes.text(s.subject_id, s.prediction_time, src.last)][:20]
    cut, whole = notes_text(dm, samples), notes_text(dm, samples, as_read=False)
    ids = dm.collate(samples).modalities["text"].tensors["input_ids"]
    for c, w, row in zip(cut, whole, ids):
        assert c == src.tokenizer.decode(row, skip_special_tokens=True)
        assert len(c.split()) <= len(src.tokenizer(w)["input_ids"]) and c.split()[:3] == w.lower().split()[:3]
    assert any(len(c) < len(w) for c, w in zip(cut, whole))  # some notes run past the text length
