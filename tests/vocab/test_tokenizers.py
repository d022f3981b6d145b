"""Tokenisers: gene top-k against a plain numpy reference; DNA/protein round trips and clear errors (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from biomm.vocab.tokenizers import (DNA_IUPAC, PROTEIN_LETTERS, DnaTokenizer, GeneTokenizer, GeneTokenizerConfig,
                                   TokenizerError, protein_tokenizer, sequence_tokenizer)
from biomm.vocab.genes import SPECIAL_TOKENS, GeneVocab

DNA6, DNA1, PROT = DnaTokenizer(6), DnaTokenizer(1), protein_tokenizer()


def test_vocab_maps_symbols_ensembl_entrez_aliases():
    v = GeneVocab.default()
    assert v.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) and v.pad_id == 0
    cd3e = v.token_id("CD3E")
    assert cd3e > v.unk_id and v.symbol(cd3e) == "CD3E"
    ens = v.info("CD3E")["ensembl"].split("|")[0]
    assert v.token_id(ens + ".7") == cd3e and v.token_id(v.info("CD3E")["entrez"]) == cd3e
    assert v.token_id("cd3e") == cd3e and v.token_id("not-a-gene") == v.unk_id
    cov = v.coverage(["CD3E", ens, "zzz-not-a-gene"])
    assert cov["n_mapped"] == 2 and cov["by"]["ensembl"] == 1


def test_gene_tokenizer_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = sp.random(20, 50, density=0.3, random_state=1, format="csr", dtype=np.float32)
    x.data = rng.integers(1, 30, x.nnz).astype(np.float32)
    ids = np.arange(50) + 10
    ids[7] = GeneVocab.unk_id  # outside the vocabulary: never a token
    for mode in ("continuous", "binned", "rank"):
        out = GeneTokenizer(ids, GeneTokenizerConfig(top_k=8, value_mode=mode))(x)
        assert out["genes"].shape == (20, 9) and (out["genes"][:, 0] == GeneVocab.cls_id).all()
        for r in range(20):
            row = x[r].toarray().ravel()
            row[7] = 0
            order = np.lexsort((np.arange(50), -row))[: min(8, (row > 0).sum())]
            np.testing.assert_array_equal(out["genes"][r, 1: 1 + len(order)].numpy(), ids[order])
            assert out["mask"][r].sum() == 1 + len(order)
            if mode == "continuous":
                np.testing.assert_allclose(out["values"][r, 1: 1 + len(order)].numpy(), row[order])
            if mode == "binned":
                v = out["values"][r, 1: 1 + len(order)].numpy()
                assert (v >= 1).all() and (v <= 50).all() and (np.diff(v) <= 0).all()


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=DNA_IUPAC + DNA_IUPAC.lower(), min_size=1, max_size=300))
def test_dna_round_trip(seq):
    for tok in (DNA6, DNA1):
        ids = tok.encode(seq)
        assert ids[0] == tok.cls_id and tok.decode(ids) == seq.upper()
    assert all(len(t) in (1, 6) for t in DNA6.tokenize(seq))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=PROTEIN_LETTERS, min_size=1, max_size=200))
def test_protein_round_trip(seq):
    ids = PROT.encode(seq)
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == len(seq) + 2  # ESM-2: <cls> ... <eos>
    assert PROT.decode(ids) == seq


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_string_encodes_or_fails_clearly(text):
    for tok in (DNA6, PROT):
        try:
            tok.encode(text)
        except TokenizerError as exc:
            assert "empty" in str(exc) or "invalid character" in str(exc)


def test_batch_padding_and_no_silent_truncation():
    b = DNA6(["ACGTACGTAC", "AC"])
    assert b["input_ids"].shape == (2, 6) and b["attention_mask"].sum().item() == 6 + 3
    with pytest.raises(TokenizerError, match="more than max_length=3"):
        PROT(["MKTVLA"], max_length=3)


def test_esm_vocab_file_is_the_esm2_token_list():
    assert PROT.vocab_size == 33 and PROT.tok.convert_ids_to_tokens([0, 1, 2, 3, 4, 32]) == [
        "<cls>", "<pad>", "<eos>", "<unk>", "L", "<mask>"]


def test_user_pretrained_tokenizer_overrides(tmp_path):
    PROT.tok.save_pretrained(tmp_path / "mytok")
    tok = sequence_tokenizer("protein", pretrained_dir=tmp_path / "mytok")
    assert tok.encode("MKT") == PROT.encode("MKT") and "mytok" in tok.name
    assert sequence_tokenizer("dna", kind="char").k == 1
    with pytest.raises(FileNotFoundError):
        sequence_tokenizer("dna", pretrained_dir=tmp_path / "missing")
