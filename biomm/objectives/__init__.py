"""Objectives take `Outputs` (and the `Batch` where targets are needed) and return
(loss, metrics). `build_objectives(cfg, model)` gives their weighted sum from the config."""
from __future__ import annotations

import torch
from torch import nn

from biomm.objectives.autoregressive import Autoregressive, build_lm
from biomm.objectives.contrastive import ContrastiveLoss
from biomm.objectives.fusion import FusedMaskedModeling, Matching
from biomm.objectives.masked import MaskedModeling
from biomm.objectives.next_event import NextEvent
from biomm.objectives.supervised import SupervisedBinary
from biomm.types import Batch, Outputs


class WeightedObjectives(nn.Module):
    """sum_i w_i * loss_i; metrics prefixed by objective name. Owns the objectives' parameters
    (temperature, prediction heads, LM), so put it in the optimizer and checkpoint with the model."""

    def __init__(self, objectives: dict[str, nn.Module], weights: dict[str, float], clean_contrastive: bool = False) -> None:
        super().__init__()
        if not objectives:
            raise ValueError("no objective has a weight > 0")
        self.objectives = nn.ModuleDict(objectives)
        self.weights = dict(weights)
        self.clean_contrastive = clean_contrastive and "contrastive" in objectives

    def needs_clean(self, masked: Batch) -> bool:
        """Whether the contrastive loss wants a second forward pass of the batch without `masked`'s masks."""
        return self.clean_contrastive and any("mlm_mask" in m.tensors for m in masked.modalities.values())

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Input corruption the objectives need before the forward pass (masked modelling)."""
        for name in ("masked", "fused_masked"):  # one mask per modality: fused_masked keeps masked's draw
            if name in self.objectives:
                batch = self.objectives[name].mask_batch(batch, generator)
        return batch

    def forward(self, outputs: Outputs, batch: Batch, clean: Outputs | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total loss (scalar) and metrics: each objective's prefixed `name/`, plus `loss`.
        `clean`: the outputs of the unmasked batch, which the contrastive loss then reads (see `needs_clean`)."""
        total, metrics = None, {}
        for name, obj in self.objectives.items():
            loss, m = obj(clean if clean is not None and name == "contrastive" else outputs, batch)
            total = self.weights[name] * loss if total is None else total + self.weights[name] * loss
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
        metrics["loss"] = float(total.detach())
        return total, metrics

    @torch.no_grad()
    def clamp_(self) -> None:
        """Call after each optimizer step (clamps the contrastive temperature)."""
        for obj in self.objectives.values():
            if hasattr(obj, "clamp_"):
                obj.clamp_()


def build_objectives(cfg, model) -> WeightedObjectives:
    """From `ModelConfig.objectives` (or the ModelConfig itself) and the built model."""
    ocfg = getattr(cfg, "objectives", cfg)
    width = model.config.d
    objs: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    c = ocfg.contrastive
    if c.weight > 0:
        objs["contrastive"] = ContrastiveLoss(c.kind, c.modalities, c.chunk_size, c.gather, c.fused_weight, c.dedupe)
        weights["contrastive"] = c.weight
    m = ocfg.masked
    if m.weight > 0:
        objs["masked"] = MaskedModeling(model.adapters, width, m.ratio, m.modalities)
        weights["masked"] = m.weight
    fm = getattr(ocfg, "fused_masked", None)
    if fm is not None and fm.weight > 0:
        objs["fused_masked"] = FusedMaskedModeling(model.adapters, width, fm.ratio, fm.modalities, model.config.heads)
        weights["fused_masked"] = fm.weight
    mt = getattr(ocfg, "matching", None)
    if mt is not None and mt.weight > 0:
        objs["matching"] = Matching(model.backbone, width, mt.modalities, mt.negatives, mt.temperature)
        weights["matching"] = mt.weight
    ne = getattr(ocfg, "next_event", None)
    if ne is not None and ne.weight > 0:
        objs["next_event"] = NextEvent(model.adapters, width, ne.max_positions)
        weights["next_event"] = ne.weight
    sup = ocfg.supervised
    if sup.weight > 0:
        if not sup.label:
            raise ValueError("objectives.supervised needs a label")
        objs["supervised"] = SupervisedBinary(sup.label, sup.source, width)
        weights["supervised"] = sup.weight
    a = ocfg.autoregressive
    if a.weight > 0:
        lm = build_lm(a.lm.kind, a.lm.pretrained, a.lm.preset, a.lm.vocab_size)
        objs["autoregressive"] = Autoregressive(lm, a.lm.mode, width, a.lm.freeze)
        weights["autoregressive"] = a.weight
    return WeightedObjectives(objs, weights, clean_contrastive=c.clean_forward)


__all__ = ["Autoregressive", "ContrastiveLoss", "FusedMaskedModeling", "MaskedModeling", "Matching", "NextEvent", "WeightedObjectives", "build_lm", "build_objectives"]
