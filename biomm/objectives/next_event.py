"""Next-event pretraining (CLMBR-style): from each point of a subject's timeline, predict the codes of the
next day with events, over the codes seen at least N times in training (the EHR adapter's `target_codes`).

It reads the EHR adapter's output tokens, so the adapter must be causal (`adapters.ehr.causal: true`):
the token at the last event of a day has seen nothing of the days after it. Labels are not needed:
every training subject's own timeline is the target. Loss: binary cross-entropy per target code,
averaged over codes and positions (multi-label, as a day holds several codes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biomm.types import Batch, Outputs


class NextEvent(nn.Module):
    """Next-event objective: a head [P, D] -> [P, target_codes] logits on the EHR tokens at each day's last event."""

    def __init__(self, adapters: nn.ModuleDict, width: int, max_positions: int = 256) -> None:
        super().__init__()
        if "ehr" not in adapters:
            raise ValueError("objectives.next_event needs the ehr modality")
        adapter = adapters["ehr"]
        if not adapter.cfg.causal:
            raise ValueError("objectives.next_event needs a causal EHR encoder (set adapters.ehr.causal: true): "
                             "a bidirectional one sees the next day it is asked to predict")
        k = adapter.cfg.target_codes
        if k < 1:
            raise ValueError("objectives.next_event: no code is frequent enough to predict "
                             f"(adapters.ehr.target_min_count = {adapter.cfg.target_min_count})")
        self.max_positions = max_positions
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, k))
        self._adapters = {"ehr": adapter}  # a plain dict, not registered: the model owns the adapter

    def forward(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean BCE (scalar) over the next-day target codes at every selected position, and metrics:
        `bce`, `positions`, `recall@10` (share of the true next-day codes among the 10 highest scores) and
        `truncated` (fraction of rows whose history was longer than the context)."""
        inp = batch.modalities.get("ehr")
        tok = outputs.tokens.get("ehr")
        if inp is None or tok is None:
            return sum(p.sum() for p in self.head.parameters()) * 0.0, {"positions": 0.0}
        t = self._adapters["ehr"].next_event_targets(inp.tensors, self.max_positions)
        keep = inp.present[t["row"]]
        row, pos, target = t["row"][keep], t["pos"][keep], t["target"][keep].to(tok.x.device)
        metrics: dict[str, float] = {}
        if "dropped" in inp.tensors:
            metrics["truncated"] = float((inp.tensors["dropped"] > 0).float().mean())
        if not len(row):
            return tok.x.sum() * 0.0 + sum(p.sum() for p in self.head.parameters()) * 0.0, {**metrics, "positions": 0.0}
        logits = self.head(tok.x[row, pos]).float()
        loss = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            top = logits.topk(min(10, logits.shape[1]), 1).indices
            hits = target.gather(1, top).sum(1)
            recall = (hits / target.sum(1).clamp_min(1.0))[target.sum(1) > 0].mean()
        metrics.update({"bce": float(loss.detach()), "positions": float(len(row)),
                        "recall@10": float(recall) if recall.numel() else 0.0})
        return loss, metrics
