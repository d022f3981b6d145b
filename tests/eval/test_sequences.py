"""A tiny protein model trained on real modlAMP peptides (masked residues + label-prompt alignment), then
`biomm eval` (probe and zero-shot against the 3-mer LR with k-fold intervals), `biomm query --sequences`
(CLI, and FASTA text over the query contract) and `biomm embed` (sequence index for similar sequences)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from biomm.ingest.demo.sequences import modlamp_fasta
from biomm.ingest.sequence import fasta

OVERRIDES = ["trainer.max_steps=12", "trainer.val_every_n_steps=12", "trainer.checkpoint_every_n_steps=12",
             "data.batch_size=32"]


@pytest.fixture(scope="module")
def peptide_model(tmp_path_factory, project_root) -> tuple[Path, Path, list[Path]]:
    from biomm.model.export import export
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    root = tmp_path_factory.mktemp("seqmodel")
    files = modlamp_fasta(root / "fa", "AMPvsUniProt.csv", limit=90)
    fasta.ingest(files, root / "cohort", {"alphabet": "protein", "label_from": "filename"}, progress=False)
    cfg = load_train_config(project_root / "configs" / "train" / "sequence_tiny.yaml", OVERRIDES)
    fit(cfg, root / "cohort", root / "run", progress=False)
    return export(root / "run", root / "model"), root / "cohort", files


def test_eval_probe_zero_shot_and_kmer_baseline(peptide_model, tmp_path):
    from biomm.eval.run import run_eval

    model, cohort, _ = peptide_model
    report, path = run_eval(model, cohort, tmp_path / "eval", [], [])
    assert report["kind"] == "sequences" and report["alphabet"] == "protein"
    assert set(report["methods"]) == {"probe", "zero_shot", "kmer_logreg", "majority"}
    assert report["methods"]["kmer_logreg"]["k"] == 3 and report["folds"] >= 2
    for r in report["methods"].values():
        acc = r["accuracy"]
        assert 0 <= acc["low"] <= acc["mean"] <= acc["high"] or acc["low"] == acc["high"]
        assert len(acc["folds"]) == report["folds"]
    assert isinstance(report["targets"]["probe_at_least_kmer_within_interval"], bool)
    text = path.read_text()
    assert "k-mer LR (k=3)" in text and (tmp_path / "eval" / "accuracy.png").exists()
    assert (model / "heads" / "sequence_probe" / "annotator.json").exists()  # the probe queries use


def test_query_sequences_cli_and_fasta_text(peptide_model, tmp_path):
    from biomm.cli import app
    from biomm.query.engine import QueryEngine
    from biomm.schema import QueryError, QueryRequest

    model, cohort, _ = peptide_model
    query = tmp_path / "q.fa"
    query.write_text(">new1\nGLFDIIKKIAESF\n>bad\nGLF1DII\n>new2\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    r = CliRunner().invoke(app, ["query", str(model), "--cohort", str(cohort), "--sequences", str(query), "--json"])
    assert r.exit_code == 0, r.output
    engine = QueryEngine(model, cohort)
    resp = engine.query(QueryRequest(kind="annotate", sequences=query.read_text()))
    details = resp.details["sequences"]
    assert [d["id"] for d in details] == ["new1", "new2"]
    assert {d["label"] for d in details} <= {"antimicrobial", "non-antimicrobial"}
    assert any("[bad]" in w and "invalid character '1'" in w for w in resp.warnings)
    assert len(resp.evidence.similar_subjects) == 5
    cohort_resp = engine.query(QueryRequest(kind="annotate", max_cells=10))
    assert len(cohort_resp.details["sequences"]) == 10
    with pytest.raises(QueryError, match="no usable protein sequence"):
        engine.query(QueryRequest(kind="annotate", sequences=">x\nAC1\n"))


def test_embed_writes_sequence_embeddings_and_a_similarity_index(peptide_model):
    from biomm.query.embed import embed_cohort
    from biomm.query.engine import QueryEngine
    from biomm.schema import QueryRequest

    model, cohort, _ = peptide_model
    info = embed_cohort(model, cohort)
    assert info["subjects"] == 180 and "sequence" in info["indexes"]
    engine = QueryEngine(model, cohort)
    subject = engine.subjects[0]
    resp = engine.query(QueryRequest(kind="similar", subject=subject, modality="sequence", k=3))
    assert len(resp.evidence.similar_subjects) == 3 and subject not in {n.subject_id for n in resp.evidence.similar_subjects}


def test_dna_preset_trains_the_cnn_on_single_nucleotides_and_annotates(tmp_path, project_root):
    """The DNA preset (janggu Oct4 / Mafk peaks): a dilated CNN over single nucleotides, aligned with label
    prompts; eval scores it against the 6-mer LR and a query annotates new peaks."""
    from biomm.eval.run import run_eval
    from biomm.ingest.demo.sequences import janggu_fasta
    from biomm.model.bundle import LoadedModel
    from biomm.model.export import export
    from biomm.query.engine import QueryEngine
    from biomm.schema import QueryRequest
    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    try:
        links = janggu_fasta(tmp_path / "links")
    except FileNotFoundError:
        pytest.skip("janggu not installed (test dependency, --no-deps)")
    files = []
    for link in links:  # the first 120 peaks of each class
        sub = tmp_path / link.name
        sub.write_text("".join(link.read_text().splitlines(keepends=True)[:240]))
        files.append(sub)
    fasta.ingest(files, tmp_path / "cohort", {"alphabet": "dna", "label_from": "filename"}, progress=False)
    cfg = load_train_config(project_root / "configs" / "train" / "dna_tiny.yaml", OVERRIDES)
    fit(cfg, tmp_path / "cohort", tmp_path / "run", progress=False)
    model = export(tmp_path / "run", tmp_path / "model")
    loaded = LoadedModel(model)
    seq = loaded.config.model.adapters["sequence"]
    assert seq.encoder == "cnn" and seq.vocab_size < 64  # single IUPAC letters and the special ids, not 6-mers
    report, _ = run_eval(model, tmp_path / "cohort", tmp_path / "eval", [], [])
    assert report["alphabet"] == "dna" and report["methods"]["kmer_logreg"]["k"] == 6
    peak = "".join(line.strip() for line in files[0].read_text().splitlines()[1:2])
    resp = QueryEngine(model, tmp_path / "cohort").query(
        QueryRequest(kind="annotate", sequences=f">peak\n{peak}\n>bad\nACGTXX\n"))
    assert [d["id"] for d in resp.details["sequences"]] == ["peak"]
    assert resp.details["sequences"][0]["label"] in {"Oct4", "Mafk"}
    assert any("[bad]" in w for w in resp.warnings)
