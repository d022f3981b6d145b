"""BiommModel: assembly from config, shapes, missing modalities, save/load, overfit, objectives."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from biomm.config import load_config
from biomm.model.factory import build_model, load_model
from biomm.model.config import ModelConfig
from biomm.objectives import build_objectives
from biomm.types import Batch, ModalityInput

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
TINY = {
    "preset": "tiny",
    "adapters": {"ehr": {"vocab_size": 64}, "imaging": {"img_size": 16, "patch_size": 8}, "omics": {"n_genes": 64},
                 "sequence": {}, "text": {"vocab_size": 64}},
    "backbone": {"num_latents": 2, "resampler_depth": 1},
}



def tiny(**over) -> ModelConfig:
    cfg = {**TINY, **over}
    return ModelConfig.model_validate(cfg)


@pytest.mark.parametrize("name", ["tiny", "small", "base", "early", "late"])
def test_presets_validate(name):
    cfg = load_config(ModelConfig, CONFIGS / f"{name}.yaml")
    assert cfg.d in (32, 256, 768)


@pytest.mark.parametrize("timing", ["middle", "early", "late"])
@pytest.mark.parametrize("absent", ["mask", "token"])
def test_shapes_and_every_parameter_gets_a_gradient(timing, absent):
    torch.manual_seed(0)
    model = build_model(tiny(backbone={**TINY["backbone"], "timing": timing, "absent": absent}, projector={"out_dim": 24}))
    batch = model.example_batch(3, 8, present_prob=0.6, seed=1)
    del batch.modalities["text"]  # a modality missing from the batch altogether
    out = model(batch)
    assert out.fused.shape == (3, 32) and out.fused_tokens.shape[0] == 3
    assert set(out.pooled) == {"ehr", "imaging", "omics", "sequence"}
    assert out.aux["lm_prefix"].shape[-1] == 24
    loss = out.fused.square().sum() + sum(v.square().sum() for v in out.pooled.values()) + out.aux["lm_prefix"].sum()
    loss.backward()
    # no unused parameter: DDP runs without find_unused_parameters
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_batch_size_one():
    model = build_model(tiny())
    out = model(model.example_batch(1, 6))
    assert out.fused.shape == (1, 32) and torch.isfinite(out.fused).all()


def test_absent_for_every_subject_trains_without_nan():
    torch.manual_seed(0)
    cfg = tiny(objectives={"masked": {"weight": 1.0}})
    model = build_model(cfg)
    objectives = build_objectives(cfg, model)
    opt = torch.optim.AdamW([*model.parameters(), *objectives.parameters()], lr=1e-3)
    for step in range(2):
        batch = model.example_batch(4, 8, seed=step)
        batch.modalities["imaging"].present[:] = False
        batch.modalities["ehr"].present[:] = False
        batch = objectives.prepare(batch, torch.Generator().manual_seed(step))
        out = model(batch)
        loss, metrics = objectives(out, batch)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        objectives.clamp_()
    assert "contrastive/ehr-imaging" not in metrics and "contrastive/omics-sequence" in metrics


def test_absent_inputs_do_not_change_present_subjects():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    batch = model.example_batch(3, 8)
    batch.modalities["imaging"].present[1] = False
    out = model(batch)
    batch.modalities["imaging"].tensors["image"][1] += 3.0
    out2 = model(batch)
    torch.testing.assert_close(out2.fused[1], out.fused[1])
    torch.testing.assert_close(out2.pooled["ehr"], out.pooled["ehr"])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config(ModelConfig, CONFIGS / "tiny.yaml")).eval()
    batch = model.example_batch(2, 8)
    before = model(batch)
    model.save(tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt").eval()
    after = again(batch)
    torch.testing.assert_close(after.fused, before.fused, rtol=0, atol=0)
    torch.testing.assert_close(after.aux["lm_prefix"], before.aux["lm_prefix"], rtol=0, atol=0)
    for m in before.pooled:
        torch.testing.assert_close(after.pooled[m], before.pooled[m], rtol=0, atol=0)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    batch = model.example_batch(2, 8)
    ref = model(batch).fused
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(batch).fused
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.1)


def test_embed_single_modality():
    model = build_model(tiny()).eval()
    batch = model.example_batch(2, 8)
    z = model.embed("text", batch.modalities["text"].tensors)
    torch.testing.assert_close(z, model(batch).pooled["text"])


# ---------------------------------------------------------------- objectives on the model
def paired_views(n: int = 64, seed: int = 0) -> Batch:
    """Two modalities that are noisy views of one latent: an expression vector and an EHR
    history whose codes and values are set by the latent."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    expr = (z @ torch.randn(4, 32, generator=g)).relu() + 0.1 * torch.rand(n, 32, generator=g)
    events = 8
    b = torch.randn(events, 4, 4, generator=g)
    codes = 2 + 4 * torch.arange(events) + torch.einsum("nd,ldk->nlk", z, b).argmax(-1)
    values = torch.einsum("nd,ld->nl", z, torch.randn(events, 4, generator=g)) + 0.1 * torch.randn(n, events, generator=g)
    ehr = {"codes": codes, "values": values, "value_mask": torch.ones(n, events, dtype=torch.bool),
           "times": torch.arange(events).float().expand(n, -1) * 30, "mask": torch.ones(n, events, dtype=torch.bool)}
    yes = torch.ones(n, dtype=torch.bool)
    return Batch({"omics": ModalityInput({"x": expr}, yes), "ehr": ModalityInput(ehr, yes.clone())}, [str(i) for i in range(n)])


def test_overfit_contrastive_on_paired_views():
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({
        "preset": "tiny", "adapters": {"omics": {"encoder": "mlp", "n_genes": 32}, "ehr": {"vocab_size": 40}},
        "backbone": {"num_latents": 2, "resampler_depth": 1},
        "objectives": {"contrastive": {"chunk_size": 16}},
    })
    model = build_model(cfg)
    objectives = build_objectives(cfg, model)
    opt = torch.optim.Adam([*model.parameters(), *objectives.parameters()], lr=3e-3)
    batch = paired_views()
    first = None
    for _ in range(150):
        loss, _ = objectives(model(batch), batch)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        objectives.clamp_()
    assert first > 0.8 * math.log(64)  # chance level at start
    assert float(loss.detach()) < 0.1 * math.log(64), float(loss.detach())  # near the minimum (0) at the end


def test_masked_and_autoregressive_objectives():
    torch.manual_seed(0)
    for mode, kind in (("prefix", "gpt2"), ("xattn", "llama")):
        cfg = tiny(projector={"out_dim": 32 if mode == "prefix" else None},
                   objectives={"masked": {"weight": 1.0},
                               "autoregressive": {"weight": 1.0, "lm": {"mode": mode, "kind": kind, "vocab_size": 50}}})
        model = build_model(cfg)
        objectives = build_objectives(cfg, model)
        batch = model.example_batch(2, 8)
        batch.labels["lm_input_ids"] = torch.randint(3, 50, (2, 5))
        batch = objectives.prepare(batch, torch.Generator().manual_seed(0))
        assert all("mlm_mask" in batch.modalities[m].tensors for m in ("ehr", "omics", "imaging", "sequence", "text"))
        out = model(batch)
        loss, metrics = objectives(out, batch)
        loss.backward()
        assert torch.isfinite(loss) and metrics["masked/loss"] > 0 and metrics["autoregressive/loss"] > 0
        trainable = [*model.parameters(), *objectives.parameters()]
        assert all(p.grad is not None for p in trainable if p.requires_grad)
        ar = objectives.objectives["autoregressive"]
        if mode == "xattn":
            assert all(float(b.attn_gate.detach()) == 0.0 for b in ar.xattn)
            assert all(b.attn_gate.grad is not None for b in ar.xattn)
