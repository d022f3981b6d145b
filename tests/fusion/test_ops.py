"""Every fusion op uses every present input and ignores absent ones; parameters registered; B=1."""
from __future__ import annotations

import pytest
import torch

from biomm.fusion.ops import FUSION_OPS, build_fusion_op
from biomm.types import Tokens

D, M = 8, 3


def make_inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vec = torch.randn(b, D, generator=g, requires_grad=True)
    tok = torch.randn(b, 4, D, generator=g, requires_grad=True)
    tok_mask = torch.ones(b, 4, dtype=torch.bool)
    tok_mask[:, -1] = False
    vec2 = torch.randn(b, D, generator=g, requires_grad=True)
    return [vec, Tokens(tok, tok_mask), vec2], [vec, tok, vec2]


@pytest.mark.parametrize("name", sorted(FUSION_OPS))
def test_uses_every_present_input_and_ignores_absent(name):
    torch.manual_seed(0)
    op = build_fusion_op(name, M, D)
    b = 4
    inputs, leaves = make_inputs(b)
    present = [torch.tensor([1, 1, 1, 0]).bool(), torch.tensor([1, 0, 1, 1]).bool(), torch.tensor([1, 1, 0, 1]).bool()]
    out = op(inputs, present)
    assert out.shape == (b, D) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for i, (leaf, p) in enumerate(zip(leaves, present)):
        grad = leaf.grad.reshape(b, -1)
        # every present input moves the output ...
        assert (grad[p].abs().sum(1) > 0).all(), f"{name}: input {i} unused where present"
        # ... and an absent one does not
        assert (grad[~p] == 0).all(), f"{name}: input {i} used where absent"
    # perturbing absent entries (and padding tokens) leaves the output unchanged
    noisy, _ = make_inputs(b, seed=1)
    mixed = []
    for i, (orig, new, p) in enumerate(zip(inputs, noisy, present)):
        ox = orig.x if isinstance(orig, Tokens) else orig
        nx = new.x if isinstance(new, Tokens) else new
        shape = (b,) + (1,) * (ox.dim() - 1)
        x = torch.where(p.view(shape), ox, nx).detach()
        if isinstance(orig, Tokens):
            x = torch.where(orig.mask[..., None], x, torch.randn_like(x))
            mixed.append(Tokens(x, orig.mask))
        else:
            mixed.append(x)
    torch.testing.assert_close(op(mixed, present), out.detach())


@pytest.mark.parametrize("name", sorted(FUSION_OPS))
def test_batch_size_one_and_registered_parameters(name):
    op = build_fusion_op(name, M, D, out_width=6)
    inputs, _ = make_inputs(1)
    present = [torch.ones(1, dtype=torch.bool)] * M
    assert op(inputs, present).shape == (1, 6)
    n_params = sum(p.numel() for p in op.parameters())
    assert n_params == sum(v.numel() for k, v in op.state_dict().items() if not k.endswith("_buffer"))
    op64 = op.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in op64.parameters())


def test_no_modality_present_is_finite():
    for name in FUSION_OPS:
        op = build_fusion_op(name, M, D)
        inputs, _ = make_inputs(2)
        out = op(inputs, [torch.zeros(2, dtype=torch.bool)] * M)
        assert torch.isfinite(out).all(), name
