"""Row-chunked contrastive losses with a hand-written backward.

Why hand-written: autograd through `q @ k.T` keeps the whole [N, M] logit matrix (and its
softmax) alive until backward. Here forward keeps only per-row log-sum-exps, and backward
recomputes each chunk's logits, so peak memory is O(chunk * M) instead of O(N * M).

`groups` (optional): per-row and per-column int64 keys of each side, (rows_a [N], cols_a [M], rows_b [N],
cols_b [M]); a column sharing either key with a row (other than the row's target) is left out of that row's
loss, chunk by chunk, so that `dedupe` keeps the linear memory too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _excluded(groups, targets, s: int, e: int) -> torch.Tensor | None:
    """[e - s, M] bool: columns sharing a key with rows s..e (their targets kept), or None without `groups`."""
    if groups is None:
        return None
    ra, ca, rb, cb = groups
    same = (ra[s:e, None] == ca[None, :]) | (rb[s:e, None] == cb[None, :])
    same[torch.arange(e - s, device=same.device), targets[s:e]] = False
    return same


class ChunkedInfoNCE(torch.autograd.Function):
    """sum_i [logsumexp_j(s q_i.k_j) - s q_i.k_{t_i}] for rows q [N,D], columns k [M,D], targets t [N]
    (j over the columns `groups` does not exclude)."""

    @staticmethod
    def forward(ctx, q, k, scale, targets, chunk: int, groups=None):
        """Summed InfoNCE (scalar) of rows `q` [N, D] against columns `k` [M, D], positives `targets` [N] long."""
        lse = torch.empty(q.shape[0], dtype=q.dtype, device=q.device)
        for s in range(0, q.shape[0], chunk):
            z = (q[s : s + chunk] @ k.T).mul_(scale)
            same = _excluded(groups, targets, s, s + z.shape[0])
            lse[s : s + chunk] = torch.logsumexp(z if same is None else z.masked_fill_(same, float("-inf")), 1)
        pos = scale * (q * k[targets]).sum(1)
        ctx.save_for_backward(q, k, scale, targets, lse)
        ctx.chunk, ctx.groups = chunk, groups
        return (lse - pos).sum()

    @staticmethod
    def backward(ctx, grad):
        """Gradients for q [N, D], k [M, D] and scale, recomputed chunk by chunk in fp32."""
        with torch.autocast(grad.device.type, enabled=False):  # fp32, whatever the caller's autocast
            return ChunkedInfoNCE._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        q, k, scale, targets, lse = ctx.saved_tensors
        gq, gk = torch.zeros_like(q), torch.zeros_like(k)
        gs = torch.zeros_like(scale)
        for s in range(0, q.shape[0], ctx.chunk):
            qc = q[s : s + ctx.chunk]
            dots = qc @ k.T
            p = (dots * scale).sub_(lse[s : s + ctx.chunk, None]).exp_()
            same = _excluded(ctx.groups, targets, s, s + qc.shape[0])
            if same is not None:
                p.masked_fill_(same, 0.0)  # left out of the softmax: no gradient
            p[torch.arange(qc.shape[0]), targets[s : s + ctx.chunk]] -= 1.0  # d loss / d logits
            torch.mm(p, k, out=gq[s : s + ctx.chunk]).mul_(scale)
            gk.addmm_(p.T, qc, alpha=float(scale))
            gs += torch.vdot(p.flatten(), dots.flatten())
        return grad * gq, grad * gk, grad * gs, None, None, None


class ChunkedSigmoid(torch.autograd.Function):
    """SigLIP: sum_ij softplus(-y_ij (s q_i.k_j + b)), y = +1 on the target pair, -1 elsewhere (pairs that
    `groups` excludes left out)."""

    @staticmethod
    def forward(ctx, q, k, scale, bias, targets, chunk: int, groups=None):
        """Summed SigLIP loss (scalar) of rows `q` [N, D] against columns `k` [M, D], positives `targets` [N] long."""
        total = q.new_zeros(())
        for s in range(0, q.shape[0], chunk):
            z = scale * (q[s : s + chunk] @ k.T) + bias
            y = -torch.ones_like(z)
            y[torch.arange(z.shape[0]), targets[s : s + chunk]] = 1.0
            loss = F.softplus(-y * z)
            same = _excluded(groups, targets, s, s + z.shape[0])
            total = total + (loss if same is None else loss.masked_fill_(same, 0.0)).sum()
        ctx.save_for_backward(q, k, scale, bias, targets)
        ctx.chunk, ctx.groups = chunk, groups
        return total

    @staticmethod
    def backward(ctx, grad):
        """Gradients for q [N, D], k [M, D], scale and bias, recomputed chunk by chunk in fp32."""
        with torch.autocast(grad.device.type, enabled=False):
            return ChunkedSigmoid._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        q, k, scale, bias, targets = ctx.saved_tensors
        gq, gk = torch.zeros_like(q), torch.zeros_like(k)
        gs, gb = torch.zeros_like(scale), torch.zeros_like(bias)
        for s in range(0, q.shape[0], ctx.chunk):
            qc = q[s : s + ctx.chunk]
            dots = qc @ k.T
            dz = (dots * scale).add_(bias).sigmoid_()  # d softplus(-y z)/dz = sigmoid(z) - [y = 1]
            same = _excluded(ctx.groups, targets, s, s + qc.shape[0])
            if same is not None:
                dz.masked_fill_(same, 0.0)
            dz[torch.arange(qc.shape[0]), targets[s : s + ctx.chunk]] -= 1.0
            torch.mm(dz, k, out=gq[s : s + ctx.chunk]).mul_(scale)
            gk.addmm_(dz.T, qc, alpha=float(scale))
            gs += torch.vdot(dz.flatten(), dots.flatten())
            gb += dz.sum()
        return grad * gq, grad * gk, grad * gs, grad * gb, None, None, None


def info_nce_sum(q, k, scale, targets, chunk: int, groups=None) -> torch.Tensor:
    """Summed InfoNCE of rows q [N, D] against columns k [M, D], in fp32 even under autocast; `groups` as in
    the module doc (None: every column is a negative)."""
    with torch.autocast(q.device.type, enabled=False):
        return ChunkedInfoNCE.apply(q.float(), k.float(), scale.float(), targets, chunk, groups)


def sigmoid_sum(q, k, scale, bias, targets, chunk: int, groups=None) -> torch.Tensor:
    """Summed SigLIP loss of rows q [N, D] against columns k [M, D], in fp32 even under autocast; `groups` as in
    the module doc."""
    with torch.autocast(q.device.type, enabled=False):
        return ChunkedSigmoid.apply(q.float(), k.float(), scale.float(), bias.float(), targets, chunk, groups)
