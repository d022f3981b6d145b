"""Peak memory of the contrastive loss, chunked (with and without `dedupe`) vs naive (for `biomm bench model`).

Run each measurement in a fresh process. torch's CPU allocator keeps no statistics, so the
honest measure is the process's resident set: the kernel's high-water mark (VmHWM) is reset
(/proc/self/clear_refs) right before the loss, read after its backward, and the RSS before the
loss is subtracted. A warm-up run first keeps lazy kernel and thread-pool set-up out of it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from biomm.objectives.contrastive import ContrastiveLoss
from biomm.types import Outputs, Tokens


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _loss(kind: str, loss_fn: ContrastiveLoss, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    n = za.shape[0]
    if kind == "naive":  # the textbook form: the full [n, n] logit matrix, autograd keeps it
        a, b = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
        logits = loss_fn.logit_scale.exp() * a @ b.T
        target = torch.arange(n)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    present = torch.ones(n, dtype=torch.bool)
    if kind == "chunked_dedupe":  # 64 label prompts shared by the rows (cells of 64 types), each row's own cell
        prompts = torch.arange(n) % 64
        return loss_fn.pair_loss(za, zb, present, (torch.arange(n), prompts))[0]
    dummy = Tokens(torch.zeros(n, 1, 1), present[:, None])
    return loss_fn(Outputs({"a": dummy, "b": dummy}, {"a": za, "b": zb}, {"a": present, "b": present}))[0]


def contrastive_peak_memory(kind: str, n: int = 4096, d: int = 512, chunk: int = 256) -> dict:
    """{loss, peak_mib, seconds} of one forward+backward of the `kind` ('naive'|'chunked'|'chunked_dedupe') loss."""
    torch.manual_seed(0)
    loss_fn = ContrastiveLoss("clip", chunk_size=chunk, dedupe=kind == "chunked_dedupe")

    def run(rows: int) -> tuple[torch.Tensor, float, float]:
        za = torch.randn(rows, d, requires_grad=True)
        zb = torch.randn(rows, d, requires_grad=True)
        _reset_peak()
        before = _status_kib("VmRSS")
        t = time.perf_counter()
        loss = _loss(kind, loss_fn, za, zb)
        loss.backward()
        seconds = time.perf_counter() - t
        return loss, (_status_kib("VmHWM") - before) / 1024, seconds

    run(2 * chunk)
    loss, peak, seconds = run(n)
    return {"loss": float(loss.detach()), "peak_mib": peak, "seconds": seconds}
