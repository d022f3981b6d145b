"""Supervised objective: a linear head on one embedding (a modality's pooled one, or the fused one)
trained with binary cross-entropy on a subject label (fine-tuning on labelled cohorts, e.g. X-ray
pneumonia). Rows without a label (NaN) or without the modality are left out of the loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biomm.types import Batch, Outputs


class SupervisedBinary(nn.Module):
    """Binary supervised objective: a linear head on the fused or one modality's embedding [B, D] -> logits [B]."""

    def __init__(self, label: str, source: str, width: int) -> None:
        super().__init__()
        self.label, self.source = label, source
        self.head = nn.Linear(width, 1)

    def logits(self, outputs: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B], rows usable [B]) for the configured embedding."""
        if self.source == "fused":
            emb = outputs.fused
            ok = torch.stack(list(outputs.present.values())).any(0)
        else:
            emb = outputs.pooled[self.source]
            ok = outputs.present[self.source]
        return self.head(emb.float()).squeeze(-1), ok

    def forward(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE loss (scalar) over rows with a label and the embedding, and {bce, accuracy} metrics."""
        if self.label not in batch.labels:
            raise KeyError(f"supervised objective: the batch has no label {self.label!r} (set data.label_name)")
        y = batch.labels[self.label].to(outputs.fused.device).float()
        z, ok = self.logits(outputs)
        ok = ok & ~torch.isnan(y)
        if not bool(ok.any()):
            return z.sum() * 0.0, {"n": 0.0}
        loss = F.binary_cross_entropy_with_logits(z[ok], y[ok])
        acc = ((z[ok] > 0).float() == y[ok]).float().mean()
        return loss, {"bce": float(loss.detach()), "accuracy": float(acc)}
