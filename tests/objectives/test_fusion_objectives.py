"""Objectives through the fusion stream: cross-modal masked modelling on fused tokens and matching put
the backbone's own parameters into the loss; the stream op uses every modality."""
from __future__ import annotations

import pytest
import torch

from biomm.model.config import ModelConfig
from biomm.model.factory import build_model
from biomm.objectives import build_objectives


def _model(timing="middle", stream_op=None, **objectives):
    cfg = ModelConfig.model_validate({
        "preset": "tiny",
        "adapters": {"ehr": {"vocab_size": 64}, "imaging": {"img_size": 16, "patch_size": 8},
                     "text": {"vocab_size": 64, "max_length": 16}},
        "backbone": {"timing": timing, "num_latents": 2, "resampler_depth": 1, "stream_op": stream_op},
        "objectives": {"contrastive": {"weight": 1.0}, **objectives}})
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, build_objectives(cfg, model)


def _grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


def _step(model, objectives, seed=0):
    batch = objectives.prepare(model.example_batch(6, 8, present_prob=1.0, seed=seed), torch.Generator().manual_seed(seed))
    out = model(batch)
    loss, metrics = objectives(out, batch)
    loss.backward()
    return loss, metrics


def test_contrastive_alone_leaves_the_fusion_stream_out():
    model, objectives = _model()
    _step(model, objectives)
    assert _grad_norm(model.backbone.xattn) == 0.0


@pytest.mark.parametrize("name", ["fused_masked", "matching"])
def test_fusion_objectives_train_the_fusion_stream(name):
    model, objectives = _model(**{name: {"weight": 1.0}})
    loss, metrics = _step(model, objectives)
    assert torch.isfinite(loss)
    assert f"{name}/loss" in metrics and metrics[f"{name}/loss"] > 0
    # the gated cross-attention of the middle-fusion stream gets a gradient (its gates start at 0, so
    # the gate parameters are the first to move)
    assert _grad_norm(model.backbone.xattn) > 0


def test_fused_masked_modelling_predicts_every_masked_modality_from_fused_tokens():
    model, objectives = _model(fused_masked={"weight": 1.0})
    _, metrics = _step(model, objectives)
    assert {"fused_masked/ehr", "fused_masked/imaging", "fused_masked/text"} <= set(metrics)
    assert _grad_norm(objectives.objectives["fused_masked"].attn) > 0


def test_fused_masked_keeps_the_unimodal_objectives_mask():
    model, objectives = _model(masked={"weight": 1.0, "modalities": ["ehr"]}, fused_masked={"weight": 1.0})
    batch = model.example_batch(4, 8, seed=1)
    once = objectives.objectives["masked"].mask_batch(batch, torch.Generator().manual_seed(0))
    both = objectives.prepare(batch, torch.Generator().manual_seed(0))
    assert torch.equal(once.modalities["ehr"].tensors["mlm_mask"], both.modalities["ehr"].tensors["mlm_mask"])
    assert "mlm_mask" in both.modalities["imaging"].tensors  # fused_masked masks the others too


def test_fused_masked_counts_only_rows_with_another_modality():
    model, objectives = _model(fused_masked={"weight": 1.0})
    batch = model.example_batch(4, 8, seed=2)
    for m in ("imaging", "text"):
        batch.modalities[m].present[:] = False
    batch = objectives.prepare(batch, torch.Generator().manual_seed(0))
    _, metrics = objectives.objectives["fused_masked"](model(batch), batch)
    assert "ehr" not in metrics  # EHR alone: nothing cross-modal to predict from


def test_matching_mines_hard_negatives_never_the_row_itself():
    _, objectives = _model(matching={"weight": 1.0, "temperature": 1e-3})
    matching = objectives.objectives["matching"]
    za = torch.eye(4)
    zb = torch.eye(4)[[1, 0, 3, 2]] + torch.eye(4) * 0.9  # b_i is close to a_i and, next, to a_{pair}
    torch.manual_seed(0)
    neg_b, neg_a = matching.mine(za, zb)
    assert (neg_b != torch.arange(4)).all() and (neg_a != torch.arange(4)).all()
    assert neg_b.tolist() == [1, 0, 3, 2]  # at a tiny temperature: the most similar wrong partner


def test_matching_skips_pairs_without_two_subjects():
    model, objectives = _model(matching={"weight": 1.0})
    batch = model.example_batch(3, 8, seed=3)
    batch.modalities["imaging"].present[:] = torch.tensor([True, False, False])
    _, metrics = objectives.objectives["matching"](model(batch), batch)
    assert "ehr-text" in metrics and "ehr-imaging" not in metrics


@pytest.mark.parametrize("timing", ["middle", "early"])
def test_stream_op_uses_every_modality(timing):
    model, _ = _model(timing, stream_op="gate")
    model.eval()
    batch = model.example_batch(2, 8, seed=4)
    base = model(batch).fused
    for m in ("ehr", "imaging", "text"):
        other = model.example_batch(2, 8, seed=5)
        mods = dict(batch.modalities)
        mods[m] = other.modalities[m]
        changed = model(type(batch)(mods, batch.subject_ids)).fused
        assert not torch.allclose(base, changed), m


def test_unknown_stream_op_is_a_config_error():
    with pytest.raises(ValueError, match="unknown fusion op 'blend'"):
        ModelConfig.model_validate({"backbone": {"stream_op": "blend"}})
