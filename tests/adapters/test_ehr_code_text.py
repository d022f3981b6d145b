"""DescEmb-style code embeddings: each EHR code adds the word-piece embeddings of its display name, shared with
the text encoder where asked; the table comes from the data, the weights carry it, the tie survives a reload."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biomm.config import ConfigError
from biomm.data.ehr import SPECIAL
from biomm.model.factory import build_model, load_model
from biomm.train.config import load_train_config
from biomm.train.run import prepare_run

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "configs" / "train" / "clinical_tiny.yaml"


def _prepared(cohort, out, *overrides):
    cfg = load_train_config(TINY, ["data.batch_size=4", *overrides])
    return prepare_run(cfg, cohort, out)


def test_code_words_spell_each_codes_display_with_the_text_tokenizer(clinical_cohort, tmp_path):
    dm, model_cfg = _prepared(clinical_cohort, tmp_path / "run", "model.adapters.ehr.code_text=shared")
    source = dm.sources["ehr"]
    tok = dm.sources["text"].tokenizer
    assert source.tokenizer is tok and model_cfg.adapters["ehr"].text_vocab_size == len(tok)
    table = dm.adapter_tables()["ehr"]["code_words"]
    vocab = source.events.vocab
    assert table.shape == (vocab.size, 16) and not table[: len(SPECIAL)].any()
    names = source.display_names()
    # a display whose words the notes tokenizer knows whole is spelt back exactly
    whole = [i for i in range(len(SPECIAL), vocab.size)
             if names[i] and len(tok(names[i], add_special_tokens=False)["input_ids"]) <= 16
             and tok.unk_token_id not in tok(names[i], add_special_tokens=False)["input_ids"]]
    assert len(whole) > 20
    for i in whole[:20]:
        assert tok.decode(table[i][table[i] > 0]) == tok.decode(tok(names[i], add_special_tokens=False)["input_ids"])
    assert any("asthma" in tok.decode(table[i]).lower() for i in range(vocab.size))


def test_shared_words_are_the_text_encoders_and_survive_save_and_load(clinical_cohort, tmp_path):
    dm, model_cfg = _prepared(clinical_cohort, tmp_path / "run", "model.adapters.ehr.code_text=shared")
    model = build_model(model_cfg)
    model.adapters["ehr"].set_tables(dm.adapter_tables()["ehr"])
    embed = model.adapters["ehr"].encoder["embed"]
    text_words = model.adapters["text"].encoder.get_input_embeddings()
    assert embed.words is text_words
    # a code's vector moves with the text encoder's embedding of its words
    code = int((embed.code_words > 0).sum(1).argmax())
    before = embed.code_vectors(torch.tensor([code])).detach().clone()
    with torch.no_grad():
        text_words.weight[embed.code_words[code][0]] += 1.0
    assert not torch.allclose(before, embed.code_vectors(torch.tensor([code])))
    model.save(tmp_path / "model")
    again = load_model(tmp_path / "model")
    e2 = again.adapters["ehr"].encoder["embed"]
    assert e2.words is again.adapters["text"].encoder.get_input_embeddings()
    torch.testing.assert_close(e2.code_words, embed.code_words)
    torch.testing.assert_close(e2.words.weight, text_words.weight)
    batch = dm.collate(dm.samples["train"][:3])
    model.eval(), again.eval()
    tensors = batch.modalities["ehr"].tensors
    torch.testing.assert_close(model.embed("ehr", tensors), again.embed("ehr", tensors))


def test_without_the_text_modality_display_names_get_their_own_tokenizer(clinical_cohort, tmp_path):
    dm, model_cfg = _prepared(clinical_cohort, tmp_path / "run", "model.adapters.ehr.code_text=own",
                              "data.modalities=[ehr]")
    table = dm.adapter_tables()["ehr"]["code_words"]
    assert (tmp_path / "run" / "artifacts" / "ehr_code_tokenizer").is_dir()
    assert int(table.max()) < model_cfg.adapters["ehr"].text_vocab_size
    model = build_model(model_cfg)
    model.adapters["ehr"].set_tables({"code_words": table})
    assert model.adapters["ehr"].encoder["embed"].words is not None


def test_shared_words_need_equal_shapes(clinical_cohort, tmp_path):
    _, model_cfg = _prepared(clinical_cohort, tmp_path / "run", "model.adapters.ehr.code_text=shared")
    bad = model_cfg.model_copy(deep=True)
    bad.adapters["ehr"] = bad.adapters["ehr"].model_copy(update={"preset": "small"})
    with pytest.raises(ConfigError, match="code_text: shared"):
        build_model(bad)
