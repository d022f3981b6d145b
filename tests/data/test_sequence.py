"""`data.kind: sequences` on real janggu DNA and modlAMP peptides: sequence subjects by split, k-mer / ESM
tokens, label prompts as text; the sequence adapter from a local pretrained ESM folder, frozen or fine-tuned."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biomm.data.config import DataConfig
from biomm.data.datamodule import build_datamodule
from biomm.ingest.demo.sequences import janggu_fasta, modlamp_fasta
from biomm.ingest.sequence import fasta


@pytest.fixture(scope="module")
def dna_cohort(tmp_path_factory) -> Path:
    """300 Oct4 and 300 Mafk peaks (the first of janggu's files), labelled by file name."""
    root = tmp_path_factory.mktemp("dna")
    try:
        links = janggu_fasta(root / "links")
    except FileNotFoundError:
        pytest.skip("janggu not installed (test dependency, --no-deps)")
    files = []
    for link in links:
        sub = root / link.name
        sub.write_text("".join(link.read_text().splitlines(keepends=True)[:600]))
        files.append(sub)
    fasta.ingest(files, root / "cohort", {"alphabet": "dna", "label_from": "filename"}, progress=False)
    return root / "cohort"


@pytest.fixture(scope="module")
def protein_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pep")
    files = modlamp_fasta(root, "AMPvsUniProt.csv", limit=60)
    fasta.ingest(files, root / "cohort", {"alphabet": "protein", "label_from": "filename"}, progress=False)
    return root / "cohort"


def _cfg(**kw) -> DataConfig:
    base = {"kind": "sequences", "modalities": ["sequence", "text"], "label_name": "label", "batch_size": 16,
            "prompt": "a DNA region bound by {label}", "sequence_max_tokens": 30}
    return DataConfig(**{**base, **kw})


def test_dna_subjects_kmer_tokens_and_label_prompts(dna_cohort, tmp_path):
    dm = build_datamodule(dna_cohort, _cfg(), tmp_path / "artifacts").prepare()
    n = {s: len(v) for s, v in dm.samples.items()}
    assert n["all"] == 600 and min(n["train"], n["val"], n["test"]) > 20
    assert dm.categories == ["Mafk", "Oct4"] and dm.prompts()[1] == "a DNA region bound by Oct4"
    sizes = dm.vocab_sizes()
    assert sizes["sequence"] == {"vocab_size": 5 + 4 ** 6 + 15, "pad_token_id": 0, "mask_token_id": 4,
                                 "cls_token_id": 2, "eos_token_id": 3}
    b = next(iter(dm.loader("train")))
    ids, mask = b.modalities["sequence"].tensors["input_ids"], b.modalities["sequence"].tensors["attention_mask"]
    assert ids.shape == (16, 30) and mask.all()  # 200 bp = <cls> + 34 six-mers (and one base), cut at 30
    assert (ids[:, 0] == 2).all() and b.modalities["text"].present.all()
    codes = b.labels["label"].long()
    text = b.modalities["text"].tensors["input_ids"]
    assert all(torch.equal(text[i], text[j]) == bool(codes[i] == codes[j]) for i in range(16) for j in range(16))
    # inference: the same subjects, the saved categories, no label prompt fed (a label is what is asked)
    inf = build_datamodule(dna_cohort, _cfg(), tmp_path / "artifacts").prepare(load_artifacts=True, inference=True)
    assert inf.categories == dm.categories and "text" not in next(iter(inf.loader("all"))).modalities


def test_protein_uses_the_esm_alphabet_and_bad_configs_fail_early(protein_cohort, dna_cohort, tmp_path):
    dm = build_datamodule(protein_cohort, _cfg(prompt="a {label} peptide", sequence_max_tokens=64)).prepare()
    sizes = dm.vocab_sizes()["sequence"]
    assert sizes["vocab_size"] == 33 and sizes["pad_token_id"] == 1 and sizes["mask_token_id"] == 32
    from biomm.config import ConfigError

    with pytest.raises(ConfigError, match="label_name is needed"):
        build_datamodule(protein_cohort, _cfg(label_name=None)).prepare()
    with pytest.raises(ConfigError, match="no label 'kind'"):
        build_datamodule(protein_cohort, _cfg(label_name="kind")).prepare()
    build_datamodule(dna_cohort, _cfg(), tmp_path / "a").prepare()
    with pytest.raises(ConfigError, match="reads dna sequences"):
        build_datamodule(protein_cohort, _cfg(), tmp_path / "a").prepare(load_artifacts=True, inference=True)


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory) -> Path:
    """A tiny random ESM-2 (EsmConfig) with the ESM tokenizer, saved with save_pretrained as a local folder."""
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    from biomm.vocab.tokenizers import ESM_VOCAB

    folder = tmp_path_factory.mktemp("esm_tiny")
    tok = EsmTokenizer(vocab_file=str(ESM_VOCAB))
    conf = EsmConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=256, position_embedding_type="rotary",
                     pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id, token_dropout=True)
    torch.manual_seed(0)
    EsmModel(conf, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_pretrained_esm_from_a_local_folder_frozen_or_fine_tuned(esm_dir, protein_cohort):
    from transformers import EsmModel

    from biomm.adapters.sequence import SequenceAdapter, SequenceConfig

    frozen = SequenceAdapter(SequenceConfig(pretrained=str(esm_dir), freeze=True), 32, "tiny")
    reference = EsmModel.from_pretrained(esm_dir, add_pooling_layer=False)
    assert torch.equal(frozen.encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"projector"}
    last = SequenceAdapter(SequenceConfig(pretrained=str(esm_dir), trainable_layers=1), 32, "tiny")
    trainable = {n for n, p in last.named_parameters() if p.requires_grad}
    assert any(".layer.1." in n for n in trainable) and not any(".layer.0." in n or "embeddings" in n for n in trainable)
    # the data reads sequences with the folder's own tokenizer; the adapter encodes them
    dm = build_datamodule(protein_cohort, _cfg(prompt="a {label} peptide", sequence_max_tokens=64)).prepare(
        {"sequence": SequenceConfig(pretrained=str(esm_dir))})
    b = next(iter(dm.loader("train")))
    tokens = frozen(b.modalities["sequence"].tensors)
    assert tokens.x.shape[:2] == b.modalities["sequence"].tensors["input_ids"].shape and tokens.x.shape[2] == 32
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        SequenceAdapter(SequenceConfig(pretrained="facebook/esm2_t6_8M_UR50D"), 32, "tiny")
