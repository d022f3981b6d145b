"""Sequences as subjects with labels (`--label-from filename|header:KEY`), on real modlAMP peptides and janggu
DNA; bad input (wrong alphabet, missing label key) is quarantined with file, record and reason."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biomm.ingest.demo.sequences import janggu_fasta, modlamp_fasta
from biomm.ingest.sequence import fasta
from biomm.store.cohort import Cohort
from biomm.store.sequences import read_sequences


@pytest.fixture(scope="module")
def peptides(tmp_path_factory) -> list[Path]:
    """40 antimicrobial and 40 non-antimicrobial peptides of modlAMP's AMPvsUniProt, one FASTA per class."""
    return modlamp_fasta(tmp_path_factory.mktemp("pep"), "AMPvsUniProt.csv", limit=40)


@pytest.fixture(scope="module")
def dna_links(tmp_path_factory) -> list[Path]:
    try:
        return janggu_fasta(tmp_path_factory.mktemp("dna"))
    except FileNotFoundError:
        pytest.skip("janggu not installed (test dependency, --no-deps)")


def test_label_from_filename_makes_labelled_subjects_and_is_idempotent(peptides, cohort_dir):
    s = fasta.ingest(peptides, cohort_dir, {"alphabet": "protein", "label_from": "filename"}, progress=False)
    assert s.exit_code == 0 and s.items_written == 80 and s.subjects_added == 80
    with Cohort(cohort_dir) as c:
        labels = Counter(v for _, v, _ in c.labels("label"))
        assert labels == {"antimicrobial": 40, "non-antimicrobial": 40}
        assert len(c.subjects(kind="sequence")) == 80 and set(c.split_map(kind="sequence").values()) <= {"train", "val", "test"}
        assert set(read_sequences(c)["subject_id"]) == set(c.subjects(kind="sequence"))
    again = fasta.ingest(peptides, cohort_dir, {"alphabet": "protein", "label_from": "filename"}, progress=False)
    assert again.sources_skipped_unchanged == 2 and again.items_written == 0 and again.subjects_added == 0
    with Cohort(cohort_dir) as c:
        assert len(c.labels("label")) == 80


def test_label_from_header_quarantines_a_record_without_the_key(tmp_path, cohort_dir):
    fa = tmp_path / "loc.fa"
    fa.write_text(">p1 loc=nucleus\nMKTAYIAKQRQISFVKSHFSRQ\n>p2 loc=membrane|x=1\nMLLAVLYCLLWSFQTSAGHFPRA\n"
                  ">p3 note=none\nMKVLAAGIVGLLLA\n")
    s = fasta.ingest([fa], cohort_dir, {"label_from": "header:loc", "label_name": "location"}, progress=False)
    assert s.exit_code == 3 and s.items_written == 2
    (q,) = s.quarantine
    assert q.source.endswith(".fa") and q.record == "p3" and "label key 'loc' missing from the header" in q.reason
    with Cohort(cohort_dir) as c:
        assert {sid: v for sid, v, _ in c.labels("location")} == {"p1": "nucleus", "p2": "membrane"}


def test_wrong_alphabet_is_detected_from_the_letters(dna_links, peptides, tmp_path, cohort_dir):
    dna = tmp_path / "few.fa"
    dna.write_text("".join(Path(dna_links[0]).read_text().splitlines(keepends=True)[:6]))  # 3 Oct4 peaks
    s = fasta.ingest([dna], cohort_dir, {"alphabet": "protein"}, progress=False)
    assert s.items_written == 0 and s.quarantined == 3
    assert all("looks like DNA" in q.reason and "--alphabet dna" in q.reason for q in s.quarantine)
    s = fasta.ingest([peptides[0]], cohort_dir, {"alphabet": "dna"}, progress=False)
    assert s.quarantined >= 35 and any("looks like protein" in q.reason for q in s.quarantine)
    # a cysteine-rich peptide made of S/C/T/V letters only is still a protein
    pep = tmp_path / "cys.fa"
    pep.write_text(">amp1\nSCTTCVCTCSCCTT\n")
    assert fasta.ingest([pep], cohort_dir, {"alphabet": "protein"}, progress=False).items_written == 1


def test_cli_label_from(dna_links, cohort_dir):
    from biomm.cli import app

    r = CliRunner().invoke(app, ["ingest", "fasta", *map(str, dna_links), "--cohort", str(cohort_dir),
                                 "--alphabet", "dna", "--label-from", "filename", "--label-name", "factor", "--json"])
    assert r.exit_code == 0, r.output
    with Cohort(cohort_dir) as c:
        assert Counter(v for _, v, _ in c.labels("factor")) == {"Oct4": 3897, "Mafk": 3900}
    r = CliRunner().invoke(app, ["ingest", "fasta", str(dna_links[0]), "--cohort", str(cohort_dir),
                                 "--label-from", "column3"])
    assert r.exit_code != 0 and "label_from" in r.output
