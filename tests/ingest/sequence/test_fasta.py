"""FASTA ingest on real sequences: janggu DNA peaks, modlamp peptides; bad records quarantined one by one."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from biomm.ingest.sequence import fasta
from biomm.ingest.sequence.summary import summary as sequence_summary
from biomm.store.sequences import read_sequences
from biomm.store.cohort import Cohort


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} not installed (test dependency)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def janggu() -> Path:
    return _pkg("janggu") / "resources"


@pytest.fixture(scope="module")
def peptides(tmp_path_factory) -> tuple[Path, Path]:
    """modlamp's AMPvsUniProt peptides as FASTA, plus a CSV mapping ids to classes."""
    df = pd.read_csv(_pkg("modlamp") / "data" / "AMPvsUniProt.csv", skiprows=1, header=None, names=["seq", "cls"])
    d = tmp_path_factory.mktemp("pep")
    fa = d / "amp.fa.gz"
    with gzip.open(fa, "wt") as fh:
        for i, s in enumerate(df["seq"].str.strip()):
            fh.write(f">pep{i} class={df['cls'].iloc[i]}\n{s}\n")
    pd.DataFrame({"id": [f"pep{i}" for i in range(len(df))], "gene": "LYZ"}).to_csv(d / "map.csv", index=False)
    return fa, d / "map.csv"


def test_janggu_dna_with_a_binary_byte_quarantines_one_record(tmp_path, janggu, cohort_dir):
    lines = (janggu / "sample.fa").read_bytes().split(b"\n")
    lines[3] = lines[3][:5] + b"\xff" + lines[3][6:]
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b"\n".join(lines))
    s = fasta.ingest([janggu / "sample2.fa", bad], cohort_dir, {"alphabet": "dna"}, progress=False)
    assert s.exit_code == 3 and s.quarantined == 1 and s.items_written == 3900 + 3896
    assert "binary/control byte" in s.quarantine[0].reason and "position 6" in s.quarantine[0].reason
    with Cohort(cohort_dir) as c:
        df = read_sequences(c)
        assert set(df["alphabet"]) == {"dna"} and (df["length"] == 200).all() and df["n_tokens"].eq(36).all()
        assert c.quarantined()[0]["record"] == s.quarantine[0].record
    again = fasta.ingest([janggu / "sample2.fa", bad], cohort_dir, {"alphabet": "dna"}, progress=False)
    assert again.sources_skipped_unchanged == 2 and again.items_written == 0
    # the same records from another file are duplicates with identical content: skipped, not stored twice
    dup = fasta.ingest([janggu / "sample.fa"], cohort_dir, {"alphabet": "dna"}, progress=False)
    assert dup.items_skipped_duplicate == 3896 and dup.items_written == 1


def test_peptides_gz_with_map_links_to_genes_and_too_long_is_reported(peptides, cohort_dir):
    fa, mapping = peptides
    s = fasta.ingest([fa], cohort_dir, {"alphabet": "protein", "map_csv": str(mapping), "map_column": "gene",
                                        "protein_max_tokens": 40}, progress=False)
    assert s.quarantined == 0 and s.items_written > 5000
    assert any("exceed the model context" in w for w in s.warnings)
    with Cohort(cohort_dir) as c:
        info = sequence_summary(c)
        df = read_sequences(c)
    assert info["by_alphabet"]["protein"]["sequences"] == s.items_written and info["links"] == {"gene": s.items_written}
    long_ = df[df["too_long"]]
    assert len(long_) and (long_["length"] + 2 > 40).all() and (long_["sequence"].str.len() == long_["length"]).all()


def test_invalid_records_each_get_a_reason(tmp_path, cohort_dir):
    fa = tmp_path / "mixed.fa"
    fa.write_text(">ok1 gene=CD3E\nMKTAYIAKQR\n>empty\n\n>badchar\nMKT1AY\n>ok1\nMKTAYIAKQQ\n"
                  ">dna1 gene=LYZ\nACGTNNRYACGT\n>stop\nMKV*\n")
    s = fasta.ingest([fa], cohort_dir, {"alphabet": "auto", "id_regex": r"gene=(\w+)"}, progress=False)
    reasons = {q.record: q.reason for q in s.quarantine}
    assert reasons == {"empty": "empty sequence",
                       "badchar": reasons["badchar"], "ok1": "duplicate id with different sequence content"}
    assert "invalid character '1'" in reasons["badchar"] and "position 4" in reasons["badchar"]
    with Cohort(cohort_dir) as c:
        df = read_sequences(c).set_index("sequence_id")
    assert df.loc["dna1", "alphabet"] == "dna" and df.loc["ok1", "alphabet"] == "protein"
    assert df.loc["stop", "sequence"] == "MKV" and df.loc["ok1", "link_kind"] == "gene"


def test_cli_fasta(tmp_path, janggu, cohort_dir):
    from biomm.cli import app

    r = CliRunner().invoke(app, ["ingest", "fasta", str(janggu / "sample2.fa"), "--cohort", str(cohort_dir),
                                 "--alphabet", "dna", "--id-regex", r"^(chr\w+):", "--json"])
    assert r.exit_code == 0, r.output
    assert '"items_written": 3900' in r.output
    not_fasta = tmp_path / "x.fa"
    not_fasta.write_text("hello\n")
    r = CliRunner().invoke(app, ["ingest", "fasta", str(not_fasta), "--cohort", str(cohort_dir)])
    assert r.exit_code == 3 and "not a readable FASTA" in r.output
