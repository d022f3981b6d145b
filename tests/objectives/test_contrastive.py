"""Contrastive: chunked == naive, pairs only where both present, clamp, SigLIP, and DDP
(2 gloo processes) == one process with the whole batch."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from biomm.objectives.contrastive import ContrastiveLoss
from biomm.types import Outputs, Tokens


def outputs(za, zb, pa, pb):
    b = za.shape[0]
    dummy = Tokens(torch.zeros(b, 1, 2), torch.ones(b, 1, dtype=torch.bool))
    return Outputs({"a": dummy, "b": dummy}, {"a": za, "b": zb}, {"a": pa, "b": pb})


def naive_clip(za, zb, scale):
    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = scale * za @ zb.T
    t = torch.arange(za.shape[0])
    return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t))


def test_chunked_clip_matches_naive_and_uses_only_pairs_with_both():
    torch.manual_seed(0)
    za, zb = torch.randn(9, 6, requires_grad=True), torch.randn(9, 6, requires_grad=True)
    pa = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 1]).bool()
    pb = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 1]).bool()
    loss_fn = ContrastiveLoss("clip", chunk_size=2)
    loss, metrics = loss_fn(outputs(za, zb, pa, pb))
    both = pa & pb
    ref = naive_clip(za[both], zb[both], loss_fn.logit_scale.exp())
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert za.grad[~both].abs().sum() == 0 and za.grad[both].abs().sum() > 0
    assert loss_fn.logit_scale.grad is not None
    assert metrics["loss"] == pytest.approx(float(ref.detach()))


def test_temperature_init_and_clamp():
    loss_fn = ContrastiveLoss("clip")
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)
    loss_fn.clamp_()
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(math.log(100))
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-1.0)
    loss_fn.clamp_()
    assert float(loss_fn.logit_scale.detach()) == 0.0


def test_siglip_matches_naive():
    torch.manual_seed(0)
    za, zb = torch.randn(7, 5), torch.randn(7, 5)
    p = torch.ones(7, dtype=torch.bool)
    loss_fn = ContrastiveLoss("siglip", chunk_size=3)
    assert float(loss_fn.logit_bias.detach()) == -10.0
    loss, _ = loss_fn(outputs(za, zb, p, p))
    a, b = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    z = loss_fn.logit_scale.exp() * a @ b.T + loss_fn.logit_bias
    y = 2 * torch.eye(7) - 1
    torch.testing.assert_close(loss, -F.logsigmoid(y * z).sum() / 7)


def test_no_pair_gives_zero_loss_with_graph():
    za = torch.randn(3, 4, requires_grad=True)
    loss_fn = ContrastiveLoss()
    loss, _ = loss_fn(outputs(za, torch.randn(3, 4), torch.tensor([1, 0, 0]).bool(), torch.tensor([0, 1, 0]).bool()))
    loss.backward()
    assert float(loss.detach()) == 0.0 and za.grad is not None and torch.isfinite(za.grad).all()


# ---------------------------------------------------------------- DDP
sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402  (spawned processes import the worker by this name)


def test_two_process_ddp_matches_single_process(tmp_path):
    """Local loss + all-gather with gradient, uneven local batches, CLIP and SigLIP: the mean loss
    and the averaged gradients of 2 gloo processes equal one process with the whole batch."""
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker.worker, args=(2, ddp_worker.free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    for kind in ddp_worker.KINDS:
        single_loss, single_grads = ddp_worker.run_step(0, 1, kind)
        loss, grads = got[kind]
        torch.testing.assert_close(loss, single_loss, atol=1e-5, rtol=1e-5)
        assert len(grads) == len(single_grads)
        for g, s in zip(grads, single_grads):
            torch.testing.assert_close(g, s, atol=1e-5, rtol=1e-5)


def test_chunked_loss_saves_no_square_matrix():
    """Memory linear in batch size: autograd keeps only O(N*D + N) values, never the N x N logits."""
    n, d = 512, 8
    za, zb = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss, _ = ContrastiveLoss("clip", chunk_size=64)(outputs(za, zb, torch.ones(n).bool(), torch.ones(n).bool()))
    assert max(saved) <= n * d and sum(saved) < 20 * n * d
    loss.backward()
