"""Masked modelling: hide a fraction of each modality's inputs and predict them from the
adapter's output tokens — expression values (omics), event codes (EHR), patch pixels
(imaging, ViT), residues / word pieces (sequence, text).

Use: `batch = objective.mask_batch(batch)` adds `mlm_mask` to the tensors; the model then hides
those inputs and returns the aligned targets in `Outputs.aux["mlm"]`; `objective(outputs)`
gives the loss. The prediction heads (one per modality) live here, sized by `Adapter.mlm_spec`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biomm.types import Batch, ModalityInput, Outputs


class MaskedModeling(nn.Module):
    """Masked-modelling objective: one head per modality maps output tokens [.., D] to `mlm_spec.size` predictions."""

    def __init__(self, adapters: nn.ModuleDict, width: int, ratio: float = 0.15, modalities: list[str] | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.specs, heads = {}, {}
        for m in modalities or list(adapters):
            try:
                spec = adapters[m].mlm_spec
            except ValueError:
                if modalities:  # asked for explicitly: say why not
                    raise
                continue
            self.specs[m] = spec
            heads[m] = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, spec.size))
        if not heads:
            raise ValueError("no modality supports masked modelling with this model's encoders")
        self.heads = nn.ModuleDict(heads)
        self._adapters = dict(adapters.items())  # not registered: the model owns them

    def mask_batch(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """A copy of `batch` whose masked modalities carry `mlm_mask` (at least one position per row)."""
        mods = dict(batch.modalities)
        for m in self.heads:
            if m not in mods:
                continue
            t = mods[m].tensors
            cand = self._adapters[m].mlm_candidates(t)
            r = torch.rand(cand.shape, generator=generator).to(cand.device)
            pick = cand & (r < self.ratio)
            # rows that drew nothing: mask their highest-scoring candidate, so every row has a target
            best = torch.where(cand, r, torch.full_like(r, 2.0)).argmin(1)
            fallback = torch.zeros_like(pick).scatter_(1, best[:, None], True) & cand
            pick = torch.where(pick.any(1, keepdim=True), pick, fallback)
            mods[m] = ModalityInput({**t, "mlm_mask": pick}, mods[m].present)
        return Batch(mods, batch.subject_ids, batch.labels, batch.extras)

    def forward(self, outputs: Outputs, batch: Batch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over modalities (scalar) of cross-entropy (classify) or MSE (regress) on the masked tokens, and metrics."""
        mlm = outputs.aux.get("mlm", {})
        losses, metrics = [], {}
        for m, head in self.heads.items():
            if m not in mlm or m not in outputs.tokens:
                continue
            sel = mlm[m]["mask"]
            x = outputs.tokens[m].x
            pred = head(x[sel]).float()
            target = mlm[m]["target"][sel]
            if self.specs[m].kind == "classify":
                loss = F.cross_entropy(pred, target) if sel.any() else pred.sum() * 0.0
                if sel.any():
                    metrics[f"{m}_acc"] = float((pred.argmax(-1) == target).float().mean())
            elif "weight" in mlm[m]:  # a vector target of which only some entries count (e.g. hidden HVG values)
                w = mlm[m]["weight"][sel].to(pred.dtype)
                loss = (w * (pred - target.float()) ** 2).sum() / w.sum().clamp_min(1.0)
            else:
                loss = F.mse_loss(pred, target.float()) if sel.any() else pred.sum() * 0.0
            metrics[m] = float(loss.detach())
            losses.append(loss)
        if not losses:
            zero = sum(p.sum() for p in self.heads.parameters()) * 0.0
            return zero, {"loss": 0.0}
        total = sum(losses) / len(losses)
        metrics["loss"] = float(total.detach())
        return total, metrics
