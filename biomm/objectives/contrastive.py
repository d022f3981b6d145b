"""Contrastive alignment over every pair of present modalities: CLIP InfoNCE or SigLIP.

A subject contributes to the pair (a, b) only when it has both. Under DDP each process
computes the loss of its own rows against all processes' columns (all-gather with gradient),
scaled so that DDP's gradient averaging gives exactly the single-process loss and gradients:
the mean over processes of the returned loss equals the loss of the whole batch.
Logits are computed in row chunks (see chunked.py), so memory grows linearly with batch size.
With `dedupe`, rows whose discrete inputs are identical in either modality of the pair (a label prompt
shared by many cells) are taken out of each other's denominators, as UniCL does for label prompts: plain
CLIP would push a cell away from its own prompt whenever another cell of its type is in the batch. The
left-out pairs are masked chunk by chunk, so memory stays linear with dedupe too.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from biomm.objectives.chunked import info_nce_sum, sigmoid_sum
from biomm.objectives.distributed import gather_no_grad, gather_with_grad, is_distributed, world_size
from biomm.types import Batch, Outputs

LOGIT_SCALE_MAX = math.log(100.0)


class ContrastiveLoss(nn.Module):
    """`forward(outputs) -> (loss, metrics)`; call `clamp_()` after each optimizer step."""

    def __init__(self, kind: str = "clip", modalities: list[str] | None = None, chunk_size: int = 1024,
                 gather: bool = True, fused_weight: float = 0.0, dedupe: bool = False) -> None:
        super().__init__()
        self.fused_weight, self.dedupe = fused_weight, dedupe
        if kind not in ("clip", "siglip"):
            raise ValueError(f"contrastive kind must be 'clip' or 'siglip', got '{kind}'")
        self.kind, self.modalities, self.chunk, self.gather = kind, modalities, chunk_size, gather
        init = math.log(1 / 0.07) if kind == "clip" else math.log(10.0)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if kind == "siglip" else None

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the log temperature in [0, ln 100] (CLIP)."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def pair_loss(self, za: torch.Tensor, zb: torch.Tensor, both: torch.Tensor,
                  groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
        """Loss of one modality pair ([B, D] each, `both` [B] bool), for this process's rows; and the global
        number of rows. `groups` ([B] int64 input hashes per side): pairs sharing either hash are not negatives."""
        za, zb = F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1)
        gather = self.gather and world_size() > 1
        ga, offset = gather_with_grad(za) if gather else (za, 0)
        gb = gather_with_grad(zb)[0] if gather else zb
        gboth = gather_no_grad(both) if gather else both
        n = int(gboth.sum())
        if n == 0:
            return (za.sum() + zb.sum()) * 0.0 + self.logit_scale * 0.0, 0
        every = bool(gboth.all())  # the common case: no copies of the embeddings
        cols_a, cols_b = (ga, gb) if every else (ga[gboth], gb[gboth])
        # each local row with both -> its index among the gathered columns
        col_index = torch.cumsum(gboth.long(), 0) - 1
        local = both.nonzero().squeeze(1)
        targets = col_index[offset + local]
        qa, qb = (za, zb) if bool(both.all()) else (za[local], zb[local])
        scale = self.logit_scale.exp()
        keys = None
        if groups is not None:
            ha, hb = (gather_no_grad(g) if gather else g for g in groups)
            ha, hb = (ha, hb) if every else (ha[gboth], hb[gboth])
            # rows (this process's, at their target columns) and columns of each side; a shared key = not a negative
            keys = (ha[targets], ha, hb[targets], hb)
        if self.kind == "clip":
            total = 0.5 * (info_nce_sum(qa, cols_b, scale, targets, self.chunk, keys)
                           + info_nce_sum(qb, cols_a, scale, targets, self.chunk, keys))
        else:
            total = sigmoid_sum(qa, cols_b, scale, self.logit_bias, targets, self.chunk, keys)
        # + 0 * (all embeddings, bias): keeps every parameter in the graph on every process
        anchor = (za.sum() + zb.sum()) * 0.0 + (self.logit_bias * 0.0 if self.logit_bias is not None else 0.0)
        return total * world_size() / n + anchor, n

    def forward(self, outputs: Outputs, batch: Batch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss (scalar) over modality pairs (plus the weighted fused terms), and metrics per pair.
        `batch` supplies the inputs that `dedupe` compares (ignored otherwise)."""
        mods = [m for m in (self.modalities or list(outputs.pooled)) if m in outputs.pooled]
        losses, metrics = [], {"logit_scale": float(self.logit_scale.detach().exp())}
        hashes = {m: input_hashes(batch, m) for m in mods} if self.dedupe and batch is not None else {}
        for a, b in itertools.combinations(mods, 2):
            both = outputs.present[a] & outputs.present[b]
            groups = (hashes[a], hashes[b]) if hashes else None
            loss, n = self.pair_loss(outputs.pooled[a], outputs.pooled[b], both, groups)
            if n:
                losses.append(loss)
                metrics[f"{a}-{b}"] = float(loss.detach())
            else:
                losses.append(loss)  # zero-weighted path
        if not losses:
            raise ValueError("contrastive loss needs at least two modalities in the outputs")
        counted = sum(1 for k in metrics if "-" in k)
        total = sum(losses) / max(counted, 1)
        if self.fused_weight > 0 and outputs.fused is not None:
            # fused <-> each modality: keeps the fused embedding subject-specific (no collapse) and
            # puts the fusion stream (resampler latents, gated cross-attention) into the loss
            fused_losses = []
            for m in mods:
                loss, n = self.pair_loss(outputs.fused, outputs.pooled[m], outputs.present[m])
                fused_losses.append(loss)
                if n:
                    metrics[f"fused~{m}"] = float(loss.detach())
            total = total + self.fused_weight * sum(fused_losses) / max(1, len(fused_losses))
        metrics["loss"] = float(total.detach())  # this process's share x world size
        return total, metrics


def input_hashes(batch: Batch, modality: str) -> torch.Tensor:
    """[B] int64 hash of each row's discrete (integer / bool) inputs of `modality`, the same on every
    process; rows with no discrete input get distinct negative values (unique across processes)."""
    t = batch.modalities[modality].tensors
    parts = [v.reshape(v.shape[0], -1).long() for k, v in sorted(t.items())
             if k != "mlm_mask" and not torch.is_floating_point(v) and v.dim() >= 1]
    first = next(iter(t.values()))
    if not parts:
        b = first.shape[0]
        rank = torch.distributed.get_rank() if is_distributed() else 0
        return -1 - rank * b - torch.arange(b, dtype=torch.long, device=first.device)
    x = (torch.cat(parts, 1) & 0x7FFFFFFF) + 1
    return _poly_hash(x, 1_000_003) * (1 << 31) + _poly_hash(x, 999_983)  # two 31-bit hashes in one int64


def _poly_hash(x: torch.Tensor, base: int) -> torch.Tensor:
    """Row hash [B] of `x` [B, L] (entries in [1, 2^31)): sum_j x_j * base^j mod 2^31 - 1, in exact int64
    arithmetic (each product < 2^62)."""
    mod, pw, p = (1 << 31) - 1, [], 1
    for _ in range(x.shape[1]):
        pw.append(p)
        p = p * base % mod
    return ((x % mod) * torch.tensor(pw, dtype=torch.long, device=x.device) % mod).sum(1) % mod
