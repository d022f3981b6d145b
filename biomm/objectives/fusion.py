"""Objectives through the fusion stream: cross-modal masked modelling on fused tokens (FLAVA's
multimodal masked modelling) and matching (ALBEF / BLIP image-text matching).

The contrastive terms align each modality's own pooled embedding, computed before any mixing;
these two put the fusion stream itself (resampler latents, gated cross-attention, the joint
transformer or the late fusion op) into the loss:

- `FusedMaskedModeling`: the inputs of every masked modality are hidden (`mlm_mask`, as for
  `MaskedModeling`); each masked token's adapter output is a query that cross-attends to the
  backbone's fused tokens (which saw the other modalities) and a head predicts the hidden input
  (event code, word piece, patch pixels, expression). Only rows where another modality is present
  count, so the target is cross-modal.
- `Matching`: for every pair (a, b) of modalities, a binary head on the fused embedding of the pair
  tells a true pair (a_i, b_i) from hard negatives (a_i, b_j) and (a_k, b_i), j and k drawn with
  probability softmax(cos(a, b) / temperature) over the other rows (ALBEF's mining, detached).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from biomm.nn.attention import MaskedAttention, feed_forward
from biomm.objectives.masked import MaskedModeling
from biomm.types import Batch, Outputs, Tokens


class FusedMaskedModeling(MaskedModeling):
    """Masked modelling predicted from the fused stream: masked tokens [N, D] attend to the fused tokens
    [B, T, D] (one pre-norm cross-attention + MLP decoder), then one head per modality predicts the input."""

    def __init__(self, adapters: nn.ModuleDict, width: int, ratio: float = 0.15, modalities: list[str] | None = None,
                 heads: int = 2) -> None:
        super().__init__(adapters, width, ratio, modalities)
        self.query_norm = nn.LayerNorm(width)
        self.attn = MaskedAttention(width, heads if width % heads == 0 else 1)
        self.ff = feed_forward(width)

    def mask_batch(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """As `MaskedModeling.mask_batch`, leaving a modality that already carries an `mlm_mask` (drawn by the
        unimodal masked objective) as it is, so both objectives predict the same hidden inputs."""
        out = super().mask_batch(batch, generator)
        mods = {m: batch.modalities[m] if "mlm_mask" in batch.modalities[m].tensors else inp
                for m, inp in out.modalities.items()}
        return Batch(mods, batch.subject_ids, batch.labels, batch.extras)

    def decode(self, query: torch.Tensor, fused_tokens: torch.Tensor, fused_mask: torch.Tensor) -> torch.Tensor:
        """Queries [B, T_m, D] after attending to `fused_tokens` [B, T, D] under `fused_mask` [B, T]: [B, T_m, D]."""
        h = query + self.attn(self.query_norm(query), fused_tokens, fused_mask)
        return h + self.ff(h)

    def forward(self, outputs: Outputs, batch: Batch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over modalities (scalar) of cross-entropy (classify) or MSE (regress) on the masked tokens of
        rows with another modality present, predicted through the fused stream; and metrics."""
        mlm = outputs.aux.get("mlm", {})
        losses, metrics = [], {}
        for m, head in self.heads.items():
            if m not in mlm or m not in outputs.tokens or outputs.fused_tokens is None:
                continue
            others = [outputs.present[o] for o in outputs.present if o != m]
            cross = torch.stack(others).any(0) if others else torch.zeros_like(outputs.present[m])
            sel = mlm[m]["mask"] & cross[:, None]
            h = self.decode(outputs.tokens[m].x, outputs.fused_tokens, outputs.fused_mask)
            pred = head(h[sel]).float()
            target = mlm[m]["target"][sel]
            if not sel.any():
                losses.append(pred.sum() * 0.0 + h.sum() * 0.0)
                continue
            if self.specs[m].kind == "classify":
                loss = F.cross_entropy(pred, target)
                metrics[f"{m}_acc"] = float((pred.argmax(-1) == target).float().mean())
            else:
                loss = F.mse_loss(pred, target.float())
            metrics[m] = float(loss.detach())
            losses.append(loss)
        if not losses:
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return zero, {"loss": 0.0}
        # + 0 * the heads of modalities not in this batch: every parameter stays in the graph (DDP)
        total = sum(losses) / max(1, sum(1 for m in self.heads if m in metrics)) + sum(
            p.sum() for p in self.heads.parameters()) * 0.0
        metrics["loss"] = float(total.detach())
        return total, metrics


class Matching(nn.Module):
    """ALBEF / BLIP matching: a binary head on the fused embedding [B, D] of a modality pair, true pairs
    against negatives mined from the pooled-embedding similarities. Re-runs the model's backbone
    (held, not owned: the model owns and saves it) on the pair's tokens, 3 rows per subject."""

    def __init__(self, backbone: nn.Module, width: int, modalities: list[str] | None = None,
                 negatives: str = "hard", temperature: float = 0.07) -> None:
        super().__init__()
        if negatives not in ("hard", "random"):
            raise ValueError(f"matching negatives must be 'hard' or 'random', got '{negatives}'")
        self.modalities, self.negatives, self.temperature = modalities, negatives, temperature
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))
        self._backbone = (backbone,)  # a tuple: not registered, so not saved twice

    def mine(self, za: torch.Tensor, zb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative indices for `za`, `zb` [N, D]: (b-partner of each a [N], a-partner of each b [N]), never the row itself."""
        n = za.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=za.device)
        if self.negatives == "hard":
            sim = F.normalize(za.detach().float(), dim=-1) @ F.normalize(zb.detach().float(), dim=-1).T
            logits = sim / self.temperature
        else:
            logits = torch.zeros(n, n, device=za.device)
        w_ab = torch.softmax(logits.masked_fill(eye, float("-inf")), 1)
        w_ba = torch.softmax(logits.T.masked_fill(eye, float("-inf")), 1)
        return torch.multinomial(w_ab, 1).squeeze(1), torch.multinomial(w_ba, 1).squeeze(1)

    def pair_logits(self, a: str, b: str, ta: Tokens, tb: Tokens, neg_b: torch.Tensor,
                    neg_a: torch.Tensor) -> torch.Tensor:
        """Logits [3N] of (a_i, b_i), (a_i, b_neg_b[i]), (a_neg_a[i], b_i) for pair tokens `ta`, `tb` (N rows)."""
        xa = torch.cat([ta.x, ta.x, ta.x[neg_a]])
        ma = torch.cat([ta.mask, ta.mask, ta.mask[neg_a]])
        xb = torch.cat([tb.x, tb.x[neg_b], tb.x])
        mb = torch.cat([tb.mask, tb.mask[neg_b], tb.mask])
        ones = torch.ones(xa.shape[0], dtype=torch.bool, device=xa.device)
        fused = self._backbone[0]({a: Tokens(xa, ma), b: Tokens(xb, mb)}, {a: ones, b: ones}).fused
        return self.head(fused.float()).squeeze(-1)

    def forward(self, outputs: Outputs, batch: Batch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over modality pairs (scalar) of the binary cross-entropy of matching, and accuracy per pair."""
        mods = [m for m in (self.modalities or list(outputs.tokens)) if m in outputs.tokens and m in outputs.pooled]
        losses, metrics = [], {}
        for a, b in itertools.combinations(mods, 2):
            rows = (outputs.present[a] & outputs.present[b]).nonzero().squeeze(1)
            if rows.numel() < 2:
                continue
            ta, tb = outputs.tokens[a], outputs.tokens[b]
            ta, tb = ta.rows(rows), tb.rows(rows)
            neg_b, neg_a = self.mine(outputs.pooled[a][rows], outputs.pooled[b][rows])
            logits = self.pair_logits(a, b, ta, tb, neg_b, neg_a)
            n = rows.numel()
            y = torch.cat([torch.ones(n), torch.zeros(2 * n)]).to(logits.device)
            loss = F.binary_cross_entropy_with_logits(logits, y)
            losses.append(loss)
            metrics[f"{a}-{b}"] = float(loss.detach())
            metrics[f"{a}-{b}_acc"] = float(((logits > 0).float() == y).float().mean())
        if not losses:
            zero = sum(p.sum() for p in self.head.parameters()) * 0.0
            return zero, {"loss": 0.0}
        total = sum(losses) / len(losses)
        metrics["loss"] = float(total.detach())
        return total, metrics
