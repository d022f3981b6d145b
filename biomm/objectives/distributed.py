"""All-gather that keeps gradients, for contrastive losses under DDP."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and
    returns this process's slice. Hand-written because torch.distributed.nn.functional.all_gather
    is deprecated, and this form (all_reduce) works on every backend, gloo included."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `x` [n, ...] from every process (gradients flow back to each owner).

    Local sizes may differ (the last batch): rows are padded to the largest size and the
    padding dropped again. Returns (gathered, offset of this process's rows).
    """
    if not is_distributed():
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    sizes_i = [int(s) for s in sizes]
    top = max(sizes_i)
    padded = torch.cat([x, x.new_zeros(top - x.shape[0], *x.shape[1:])]) if x.shape[0] < top else x
    parts = _AllGather.apply(padded).split(top)
    rank = dist.get_rank()
    return torch.cat([p[:n] for p, n in zip(parts, sizes_i)]), sum(sizes_i[:rank])


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor (e.g. masks) from every process, no gradient."""
    if not is_distributed():
        return x
    return gather_with_grad(x.detach())[0]


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1
