"""Worker of the two-process contrastive test. A plain module (not a test file) so that
processes started by torch.multiprocessing.spawn can import it by name."""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from biomm.objectives.contrastive import ContrastiveLoss
from biomm.types import Outputs, Tokens


def outputs(za, zb, pa, pb):
    b = za.shape[0]
    dummy = Tokens(torch.zeros(b, 1, 2), torch.ones(b, 1, dtype=torch.bool))
    return Outputs({"a": dummy, "b": dummy}, {"a": za, "b": zb}, {"a": pa, "b": pb})


def data():
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.randn(10, 5, generator=g), torch.randn(10, 6, generator=g)
    pa = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 0, 1]).bool()
    pb = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 1]).bool()
    return xa, xb, pa, pb


def run_step(rank: int, world: int, kind: str):
    torch.manual_seed(0)
    ea, eb = torch.nn.Linear(5, 4), torch.nn.Linear(6, 4)
    loss_fn = ContrastiveLoss(kind, chunk_size=3)
    xa, xb, pa, pb = data()
    # uneven split: rank 0 gets 6 rows, rank 1 gets 4 (last-batch case)
    sl = slice(0, 10) if world == 1 else (slice(0, 6) if rank == 0 else slice(6, 10))
    loss, _ = loss_fn(outputs(ea(xa[sl]), eb(xb[sl]), pa[sl], pb[sl]))
    loss.backward()
    params = [*ea.parameters(), *eb.parameters(), *loss_fn.parameters()]
    grads = [p.grad.clone() for p in params]
    if world > 1:  # what DDP does: average gradients over processes
        for g in grads:
            dist.all_reduce(g)
            g /= world
        lt = loss.detach().clone()
        dist.all_reduce(lt)
        loss = lt / world
    return loss.detach(), grads


KINDS = ("clip", "siglip")


def worker(rank, world, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {kind: run_step(rank, world, kind) for kind in KINDS}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
