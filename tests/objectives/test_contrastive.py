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


def _batch(texts: list[list[int]], cells: torch.Tensor):
    from biomm.types import Batch, ModalityInput

    ids = torch.tensor(texts)
    ones = torch.ones(len(texts), dtype=torch.bool)
    mods = {"a": ModalityInput({"x": cells}, ones),  # float inputs only: every row its own group
            "b": ModalityInput({"input_ids": ids, "attention_mask": ids > 0}, ones)}
    return Batch(mods, [f"s{i}" for i in range(len(texts))], {}, {})


def test_dedupe_drops_same_prompt_rows_from_the_denominators():
    """Four cells, prompts [A, A, B, C]: with dedupe cell 0 is not pushed away from prompt A through
    cell 1's copy, and prompt A's row does not count cell 1 as a negative (UniCL); unique prompts: plain CLIP."""
    torch.manual_seed(1)
    za, zb = torch.randn(4, 5), torch.randn(4, 5)
    texts = [[5, 7, 0], [5, 7, 0], [6, 2, 0], [9, 9, 9]]
    every = torch.ones(4, dtype=torch.bool)
    fn = ContrastiveLoss("clip", dedupe=True)
    loss, _ = fn(outputs(za, zb, every, every), _batch(texts, torch.randn(4, 3)))
    s = fn.logit_scale.exp()
    a, b = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = s * a @ b.T
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    t = torch.arange(4)
    ref = 0.5 * (F.cross_entropy(logits.masked_fill(same, float("-inf")), t)
                 + F.cross_entropy(logits.T.masked_fill(same, float("-inf")), t))
    torch.testing.assert_close(loss, ref)
    assert not torch.allclose(loss, naive_clip(za, zb, s))
    distinct = [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]]
    plain, _ = ContrastiveLoss("clip")(outputs(za, zb, every, every))
    deduped, _ = fn(outputs(za, zb, every, every), _batch(distinct, torch.randn(4, 3)))
    torch.testing.assert_close(deduped, plain)


def test_dedupe_in_chunks_matches_the_full_masked_matrix_with_gradients():
    """dedupe keeps the chunked path: with chunks of 3 rows over a batch of 10 (prompts repeating), loss and
    gradients equal the full [n, n] masked-logit formula, for CLIP and SigLIP."""
    torch.manual_seed(3)
    texts = [[1, 0], [2, 0], [1, 0], [3, 0], [2, 0], [1, 0], [4, 0], [5, 0], [3, 0], [6, 0]]
    every = torch.ones(10, dtype=torch.bool)
    same = torch.tensor([[texts[i] == texts[j] and i != j for j in range(10)] for i in range(10)])
    t = torch.arange(10)
    for kind in ("clip", "siglip"):
        fn = ContrastiveLoss(kind, dedupe=True, chunk_size=3)
        za, zb = torch.randn(10, 6, requires_grad=True), torch.randn(10, 6, requires_grad=True)
        loss, _ = fn(outputs(za, zb, every, every), _batch(texts, torch.randn(10, 3)))
        ga, gb = torch.autograd.grad(loss, (za, zb))
        ra, rb = za.detach().clone().requires_grad_(), zb.detach().clone().requires_grad_()
        logits = fn.logit_scale.exp() * F.normalize(ra, dim=-1) @ F.normalize(rb, dim=-1).T
        if kind == "clip":
            ref = 0.5 * (F.cross_entropy(logits.masked_fill(same, float("-inf")), t)
                         + F.cross_entropy(logits.T.masked_fill(same, float("-inf")), t))
        else:
            sign = 2 * torch.eye(10) - 1
            ref = -F.logsigmoid((logits + fn.logit_bias) * sign).masked_fill(same, 0.0).sum() / 10
        ref_a, ref_b = torch.autograd.grad(ref, (ra, rb))
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(ga, ref_a)
        torch.testing.assert_close(gb, ref_b)


def test_input_hashes_equal_exactly_for_equal_rows():
    from biomm.objectives.contrastive import input_hashes

    rows = [[5, 7, 0], [5, 7, 0], [7, 5, 0], [5, 7, 1], [0, 0, 0]]
    h = input_hashes(_batch(rows, torch.randn(5, 3)), "b")
    assert h[0] == h[1] and len(set(h[1:].tolist())) == 4
    assert len(set(input_hashes(_batch(rows, torch.randn(5, 3)), "a").tolist())) == 5


def test_clean_forward_feeds_the_unmasked_outputs_to_the_contrastive_loss():
    from biomm.objectives import WeightedObjectives
    from biomm.types import ModalityInput

    torch.manual_seed(2)
    every = torch.ones(4, dtype=torch.bool)
    plain = _batch([[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], torch.randn(4, 3))
    masked = type(plain)({**plain.modalities, "a": ModalityInput({**plain.modalities["a"].tensors,
                                                                  "mlm_mask": torch.rand(4, 3) < 0.5}, every)},
                         plain.subject_ids)
    fn = ContrastiveLoss("clip")
    objs = WeightedObjectives({"contrastive": fn}, {"contrastive": 1.0}, clean_contrastive=True)
    assert objs.needs_clean(masked) and not objs.needs_clean(plain)
    assert not WeightedObjectives({"contrastive": fn}, {"contrastive": 1.0}).needs_clean(masked)
    out_masked = outputs(torch.randn(4, 5), torch.randn(4, 5), every, every)
    out_clean = outputs(torch.randn(4, 5), torch.randn(4, 5), every, every)
    loss, _ = objs(out_masked, masked, out_clean)
    torch.testing.assert_close(loss, fn(out_clean)[0])
    torch.testing.assert_close(objs(out_masked, masked)[0], fn(out_masked)[0])
