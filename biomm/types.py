"""The contracts between layers: Tokens (adapter output), Batch (model input), Outputs (model output).

Missing modalities are normal. Every modality in a Batch carries a presence mask `[B]`; an
absent modality is masked out of attention and out of every loss pair, never zero-filled silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch



@dataclass
class Tokens:
    """Adapter output: `x` [B, T, D] in the shared width, `mask` [B, T] bool (True = real token), and optional
    pooling weights `weight` [B, T] float (None = every real token weighs the same)."""

    x: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 3:
            raise ValueError(f"Tokens.x must be [B, T, D], got shape {tuple(self.x.shape)}")
        if self.mask.shape != self.x.shape[:2] or self.mask.dtype != torch.bool:
            raise ValueError(
                f"Tokens.mask must be bool [B, T] = {tuple(self.x.shape[:2])}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )

    def masked(self, present: torch.Tensor) -> "Tokens":
        """These tokens with the mask [B, T] and-ed with `present` [B] (weights kept)."""
        return Tokens(self.x, self.mask & present[:, None], self.weight)

    def rows(self, index: torch.Tensor) -> "Tokens":
        """The rows `index` [R] of the batch: Tokens [R, T, D] (weights kept)."""
        return Tokens(self.x[index], self.mask[index], None if self.weight is None else self.weight[index])

    def pooled(self) -> torch.Tensor:
        """Masked (weighted) mean over tokens: [B, D]. Rows with no real token give zeros (and must be masked by the caller)."""
        m = self.mask.to(self.x.dtype) if self.weight is None else self.mask.to(self.x.dtype) * self.weight.to(self.x.dtype)
        m = m.unsqueeze(-1)
        return (self.x * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class ModalityInput:
    """One modality's tensors for a batch, plus its presence mask `present` [B] bool."""

    tensors: dict[str, torch.Tensor]
    present: torch.Tensor

    def to(self, device: torch.device | str) -> "ModalityInput":
        """A copy with every tensor and `present` [B] moved to `device`."""
        return ModalityInput({k: v.to(device) for k, v in self.tensors.items()}, self.present.to(device))


@dataclass
class Batch:
    """Per-modality inputs with presence masks, subject ids, and optional labels/targets."""

    modalities: dict[str, ModalityInput]
    subject_ids: list[str]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Batch size B (the number of subject ids)."""
        return len(self.subject_ids)

    def present(self, modality: str) -> torch.Tensor:
        """Presence mask [B] bool of `modality`; all False when the batch does not carry it."""
        if modality not in self.modalities:
            return torch.zeros(self.size, dtype=torch.bool)
        return self.modalities[modality].present

    def to(self, device: torch.device | str) -> "Batch":
        """A copy with the modality tensors and labels moved to `device` (extras untouched)."""
        return Batch(
            {k: v.to(device) for k, v in self.modalities.items()},
            list(self.subject_ids),
            {k: v.to(device) for k, v in self.labels.items()},
            self.extras,
        )


@dataclass
class Outputs:
    """Model output. Losses and heads take this; the model computes no loss.

    tokens / pooled / present: per modality. fused_tokens [B, T, D] with fused_mask; fused [B, D].
    aux carries intermediate values objectives may need (e.g. masked-modelling predictions).
    """

    tokens: dict[str, Tokens]
    pooled: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    fused_tokens: torch.Tensor | None = None
    fused_mask: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)
