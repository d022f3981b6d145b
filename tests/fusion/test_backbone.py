"""Gated cross-attention is the identity at init; resampler and backbones handle absent modalities."""
from __future__ import annotations

import torch

from biomm.fusion.backbone import EarlyFusion, LateFusion, MiddleFusion
from biomm.fusion.projector import build_projector
from biomm.fusion.resampler import PerceiverResampler
from biomm.fusion.xattn import GatedCrossAttentionBlock
from biomm.types import Tokens


def test_fresh_gated_block_is_identity_and_gate_gets_gradient():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(16, 2, media_width=12)
    x = torch.randn(3, 5, 16)
    media = torch.randn(3, 7, 12)
    mask = torch.rand(3, 7) > 0.3
    out = block(x, media, mask)
    assert torch.equal(out, x)
    out.pow(2).sum().backward()
    assert block.attn_gate.grad is not None and block.attn_gate.grad.abs() > 0
    assert block.ff_gate.grad is not None and block.ff_gate.grad.abs() > 0


def test_gated_block_with_no_media_is_finite():
    block = GatedCrossAttentionBlock(8, 2)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
    out = block(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_resampler_shape_and_padding_ignored():
    torch.manual_seed(0)
    r = PerceiverResampler(8, 2, num_latents=3, depth=2)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6]).bool()
    out = r(Tokens(x, mask))
    assert out.shape == (2, 3, 8)
    x2 = x.clone()
    x2[0, 3:] = 100.0
    torch.testing.assert_close(r(Tokens(x2, mask)), out)
    assert torch.isfinite(r(Tokens(x, torch.zeros_like(mask)))).all()


def toks(b, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    return Tokens(torch.randn(b, t, d, generator=g), torch.ones(b, t, dtype=torch.bool))


def test_backbones_mask_absent_modalities():
    torch.manual_seed(0)
    mods = ["a", "b", "c"]
    for bb in (MiddleFusion(mods, 8, 2, 2, num_latents=2), EarlyFusion(mods, 8, 2, 1), LateFusion(mods, 8, "gate")):
        tokens = {"a": toks(3, 4, 8, 0), "b": toks(3, 5, 8, 1)}  # "c" missing from the batch
        present = {"a": torch.tensor([1, 1, 0]).bool(), "b": torch.tensor([1, 0, 0]).bool()}
        if isinstance(bb, MiddleFusion):
            with torch.no_grad():
                for blk in bb.xattn:
                    blk.attn_gate.fill_(1.0)
        out = bb(tokens, present)
        assert torch.isfinite(out.fused).all() and torch.isfinite(out.fused_tokens).all()
        # subject 1 has no "b": changing its b tokens changes nothing
        t2 = {"a": tokens["a"], "b": Tokens(tokens["b"].x.clone(), tokens["b"].mask)}
        t2["b"].x[1] += 5.0
        torch.testing.assert_close(bb(t2, present).fused[1], out.fused[1])
        assert not out.fused_mask[2].any() or isinstance(bb, EarlyFusion)


def test_projector_kinds():
    assert build_projector("linear", 8, 16)(torch.randn(2, 3, 8)).shape == (2, 3, 16)
    p = build_projector("mlp3x_gelu", 8, 16)
    assert p(torch.randn(2, 3, 8)).shape == (2, 3, 16) and len(p) == 5


def test_attention_pooling_reads_real_tokens_only_and_can_pick_one():
    """`pooling: attention`: padding never moves the pooled embedding, an empty row pools to the head's bias,
    and (unlike the mean) the probe can attend to one token among many."""
    torch.manual_seed(0)
    for bb in (EarlyFusion(["a", "b"], 8, 2, 1, pooling="attention"), LateFusion(["a", "b"], 8, pooling="attention", heads=2),
               MiddleFusion(["a", "b"], 8, 2, 1, num_latents=2, pooling="attention")):
        t = toks(3, 6, 8, 0)
        t.mask[0, 4:] = False
        t.mask[2] = False
        out = bb.embed("a", t)
        assert out.shape == (3, 8) and torch.isfinite(out).all()
        moved = Tokens(t.x.clone(), t.mask)
        moved.x[0, 4:] += 7.0
        moved.x[2] += 7.0
        torch.testing.assert_close(bb.embed("a", moved)[[0, 2]], out[[0, 2]])
        assert bb.attn_pool["a"].probe in set(bb.modality_parameters("a"))
    pool = EarlyFusion(["a"], 8, 2, 1, pooling="attention").attn_pool["a"]
    x = torch.zeros(1, 50, 8)
    x[0, 17] = 3.0
    with torch.no_grad():  # a probe aligned with the odd token's key: the pooled value is that token's
        pool.norm.weight.fill_(1.0), pool.norm.bias.zero_()
        pool.probe.copy_(pool.norm(x[:, 17:18]) * 50)
        w = pool.attn.attn.in_proj_weight
        w.copy_(torch.eye(8).repeat(3, 1))
        pool.attn.attn.in_proj_bias.zero_()
    h = pool.attn(pool.probe, pool.norm(x), torch.ones(1, 50, dtype=torch.bool))
    v = pool.attn.attn.out_proj(pool.norm(x[:, 17:18]))
    torch.testing.assert_close(h, v, atol=1e-3, rtol=1e-3)
