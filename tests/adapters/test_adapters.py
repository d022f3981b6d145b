"""Adapters: shapes, masks, truncation, freezing, encoder choice, local pretrained directories."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from biomm.adapters import ADAPTERS, adapter_class, build_adapter
from biomm.adapters.ehr import EhrConfig, take_last
from biomm.adapters.imaging import ImagingConfig
from biomm.adapters.omics import OmicsConfig, quantile_bins
from biomm.adapters.sequence import SequenceConfig
from biomm.adapters.text import TextConfig

D = 16
SMALL = {"imaging": {"img_size": 16, "patch_size": 4}, "omics": {"n_genes": 64}, "text": {"vocab_size": 128}, "ehr": {"vocab_size": 64}}


def adapter(m, **kw):
    return build_adapter(m, adapter_class(m).Config(**{**SMALL.get(m, {}), **kw}), D, "tiny")


@pytest.mark.parametrize("modality", sorted(ADAPTERS))
def test_shapes_and_batch_size_one(modality):
    torch.manual_seed(0)
    a = adapter(modality)
    for b in (1, 3):
        t = a.example_tensors(b, 10, torch.Generator().manual_seed(0))
        out = a(t)
        assert out.x.shape[0] == b and out.x.shape[2] == D and out.mask.shape == out.x.shape[:2]
        assert torch.isfinite(out.x).all()


@pytest.mark.parametrize("modality", sorted(ADAPTERS))
def test_freeze_trains_only_the_projector(modality):
    a = adapter(modality, freeze=True)
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") for n in trainable)
    a.train()
    assert not a.encoder.training and a.projector.training
    out = a(a.example_tensors(2, 8, torch.Generator().manual_seed(0)))
    out.x.sum().backward()
    assert all(p.grad is not None for p in a.projector.parameters())


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    a = adapter("ehr").eval()
    t = a.example_tensors(2, 8, torch.Generator().manual_seed(0))
    t["mask"][0, 5:] = False
    out = a(t)
    t2 = {k: v.clone() for k, v in t.items()}
    t2["codes"][0, 5:] = 7
    t2["values"][0, 5:] = 99.0
    out2 = a(t2)
    torch.testing.assert_close(out2.x[0, :5], out.x[0, :5])
    assert not out.mask[0, 5:].any()


def test_ehr_keeps_the_most_recent_events():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]).bool()
    codes = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 0, 0, 0, 0]])
    out = take_last({"codes": codes, "mask": mask}, mask, 3)
    assert out["codes"].tolist()[0] == [6, 7, 8]
    assert out["codes"][1][out["mask"][1]].tolist() == [5, 6]
    a = build_adapter("ehr", EhrConfig(vocab_size=16, max_events=3), D, "tiny")
    t = {"codes": codes, "values": torch.zeros(2, 6), "value_mask": torch.zeros(2, 6, dtype=torch.bool),
         "times": torch.arange(6.0).expand(2, 6), "mask": mask}
    assert a(t).x.shape == (2, 3, D)


def test_ehr_ignores_events_after_prediction_time_and_time_encodings():
    torch.manual_seed(0)
    for enc in ("sinusoidal", "log_bucket"):
        a = build_adapter("ehr", EhrConfig(vocab_size=16, time_encoding=enc), D, "tiny").eval()
        t = {"codes": torch.tensor([[2, 3, 4]]), "values": torch.tensor([[1.0, 0.0, 0.0]]),
             "value_mask": torch.tensor([[True, False, False]]), "times": torch.tensor([[0.0, 10.0, 20.0]]),
             "mask": torch.ones(1, 3, dtype=torch.bool), "prediction_time": torch.tensor([15.0])}
        out = a(t)
        assert out.mask.tolist() == [[True, True, False]]
        t["codes"] = torch.tensor([[2, 3, 9]])
        torch.testing.assert_close(a(t).x[:, :2], out.x[:, :2])


@pytest.mark.parametrize("network,dims,size", [("vit", 3, 16), ("densenet121", 2, 32), ("resnet18", 3, 32), ("resnet18", 2, 32)])
def test_imaging_networks(network, dims, size):
    a = build_adapter("imaging", ImagingConfig(network=network, spatial_dims=dims, img_size=size, patch_size=8), D, "tiny")
    # batch 2: BatchNorm CNNs cannot train on one sample with a 1-voxel feature map
    out = a({"image": torch.randn(2, 1, *[size] * dims)})
    assert out.x.shape[0] == 2 and out.x.shape[2] == D and out.x.shape[1] >= 1


def test_imaging_patchify_matches_vit_patch_order():
    a = build_adapter("imaging", ImagingConfig(img_size=8, patch_size=4), D, "tiny")
    img = torch.arange(64.0).view(1, 1, 8, 8)
    p = a.patchify(img)
    assert p.shape == (1, 4, 16)
    assert p[0, 1].tolist()[:4] == [4.0, 5.0, 6.0, 7.0]  # second patch: top-right block


def test_omics_binned_mlp_and_gene_embedding_init(tmp_path):
    values = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    bins = quantile_bins(values, torch.ones(1, 4, dtype=torch.bool), 4)
    assert bins[0, 0] == 0 and bins[0, 2] < bins[0, 3] <= bins[0, 1]
    a = build_adapter("omics", OmicsConfig(n_genes=32, value_encoding="binned"), D, "tiny")
    assert a(a.example_tensors(2, 6, torch.Generator())).x.shape == (2, 6, D)
    mlp = build_adapter("omics", OmicsConfig(encoder="mlp", n_genes=32), D, "tiny")
    assert mlp({"x": torch.rand(2, 32)}).x.shape == (2, 1, D)
    table = np.random.default_rng(0).normal(size=(32, 20)).astype("float32")
    np.save(tmp_path / "genes.npy", table)
    a = build_adapter("omics", OmicsConfig(n_genes=32, gene_embeddings=str(tmp_path / "genes.npy")), D, "tiny")
    torch.testing.assert_close(a.encoder.gene.prior, torch.from_numpy(table))
    assert "encoder.gene.prior" in a.state_dict()
    with pytest.raises(ValueError):
        a.init_gene_embeddings(torch.zeros(5, 20))


def test_sequence_and_text_from_local_pretrained_dir(tmp_path):
    seq = build_adapter("sequence", SequenceConfig(), D, "tiny")
    seq.encoder.save_pretrained(tmp_path / "esm")
    again = build_adapter("sequence", SequenceConfig(pretrained=str(tmp_path / "esm")), D, "tiny")
    torch.testing.assert_close(again.encoder.embeddings.word_embeddings.weight, seq.encoder.embeddings.word_embeddings.weight)
    text = build_adapter("text", TextConfig(vocab_size=64), D, "tiny")
    text.encoder.save_pretrained(tmp_path / "bert")
    again = build_adapter("text", TextConfig(pretrained=str(tmp_path / "bert")), D, "tiny")
    ids = {"input_ids": torch.randint(5, 60, (2, 7)), "attention_mask": torch.ones(2, 7)}
    text.eval(), again.eval()
    torch.testing.assert_close(again.encoder(**ids).last_hidden_state, text.encoder(**ids).last_hidden_state)


@pytest.mark.parametrize("modality", sorted(ADAPTERS))
def test_mlm_targets_align_with_tokens(modality):
    a = adapter(modality)
    t = a.example_tensors(2, 8, torch.Generator().manual_seed(0))
    cand = a.mlm_candidates(t)
    t["mlm_mask"] = cand & (torch.rand(cand.shape) < 0.5)
    out = a(t)
    tgt = a.mlm_targets(t)
    assert tgt["mask"].shape == out.mask.shape
    assert tgt["target"].shape[:2] == out.mask.shape
    assert a.mlm_spec.size >= 1


def test_sequence_cnn_encoder_is_padding_invariant_local_and_trains():
    """The dilated CNN: real tokens ignore padding and what lies beyond its receptive field; masked modelling
    runs; a frozen one trains only the projector; trainable_layers needs the transformer."""
    from biomm.config import ConfigError

    torch.manual_seed(0)
    a = adapter("sequence", encoder="cnn", kernel_size=3, dilations=[1, 2], layers=1).eval()
    assert type(a.encoder).__name__ == "ConvSequenceEncoder"
    t = a.example_tensors(2, 40, torch.Generator().manual_seed(0))
    t["attention_mask"][0, 30:] = 0
    out = a(t)
    t2 = {k: v.clone() for k, v in t.items()}
    t2["input_ids"][0, 30:] = 5  # padding content must not matter
    torch.testing.assert_close(a(t2).x[0, :30], out.x[0, :30])
    # receptive field: 1 + 2 * (1 + 2) = 7 tokens, so changing token 39 leaves tokens 0 .. 32 of row 1 alone
    t3 = {k: v.clone() for k, v in t.items()}
    t3["input_ids"][1, 39] = 4 if int(t["input_ids"][1, 39]) != 4 else 5
    changed = (a(t3).x[1] - out.x[1]).abs().sum(-1) > 1e-6
    assert changed[39] and not changed[:33].any()
    t["mlm_mask"] = a.mlm_candidates(t) & (torch.rand(2, 40) < 0.3)
    a.train()
    a(t).x.sum().backward()
    assert a.encoder.embed.weight.grad is not None
    frozen = adapter("sequence", encoder="cnn", freeze=True)
    assert all(n.startswith("projector.") for n, p in frozen.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="trainable_layers"):
        adapter("sequence", encoder="cnn", trainable_layers=1)
