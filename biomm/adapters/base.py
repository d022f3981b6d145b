"""Shared parts of every adapter: size presets, the config base, freezing, and helpers.

An adapter maps one modality's tensors to `Tokens([B, T, D], mask)` in the shared width D.
It is an encoder (chosen by config: a named class, a size preset, or a local pretrained
directory) followed by a projector to D. `freeze` trains only the projector (LiT / LLaVA stage 1).

Masked modelling: when the tensors carry `mlm_mask` (bool, shaped as `mlm_candidates`), the
adapter hides those inputs, and `mlm_targets` returns the mask and targets aligned with its
output tokens; `mlm_spec` says what a prediction head must output.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from biomm.config import StrictModel
from biomm.types import Tokens

Preset = Literal["tiny", "small", "base"]

# width, layers, attention heads of an encoder at each preset (BERT-tiny / -small / -base like).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 32, "layers": 1, "heads": 2},
    "small": {"width": 256, "layers": 2, "heads": 4},
    "base": {"width": 768, "layers": 12, "heads": 12},
}


class AdapterConfig(StrictModel):
    """Fields every adapter shares."""

    preset: Preset | None = Field(None, description="Encoder size; default: the model's preset")
    pretrained: str | None = Field(None, description="Local directory of a pretrained encoder (never a hub name)")
    freeze: bool = Field(False, description="Freeze the encoder; only the projector to the shared width trains")
    layers: int | None = Field(None, ge=1, description="Override the preset's number of encoder layers")


class MlmSpec(StrictModel):
    """What a masked-modelling head predicts per masked token: class ids or a real vector."""

    kind: Literal["classify", "regress"]
    size: int


class Adapter(nn.Module, ABC):
    """Base: `encoder` + `projector`; subclasses implement `encode(tensors) -> (h [B,T,E], mask [B,T])`."""

    modality: str = ""

    def __init__(self, encoder: nn.Module, encoder_width: int, width: int, freeze: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.LayerNorm(encoder_width), nn.Linear(encoder_width, width))
        self.frozen = False
        if freeze:
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Freeze every parameter except the projector's (and keep the frozen part in eval mode)."""
        self.frozen = True
        for name, p in self.named_parameters():
            if not name.startswith("projector."):
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Adapter":
        """Set train / eval mode (a frozen encoder stays in eval mode); returns self."""
        super().train(mode)
        if self.frozen:
            for name, child in self.named_children():
                if name != "projector":
                    child.eval()
        return self

    def set_tables(self, tables: dict[str, torch.Tensor]) -> None:
        """Fill fixed tables the data decides (buffers the weights then carry, e.g. the EHR's code word pieces);
        adapters without such tables ignore them."""

    def tie(self, adapters: nn.ModuleDict) -> None:
        """Share parameters with the model's other adapters where the config asks (called once by the factory)."""

    @abstractmethod
    def encode(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder hidden states [B, T, E] and the real-token mask [B, T]."""

    def forward(self, tensors: dict[str, torch.Tensor]) -> Tokens:
        """Encode `tensors` and project to the shared width: `Tokens(x [B, T, D], mask [B, T] bool)`."""
        if self.frozen:
            with torch.no_grad():
                h, mask = self.encode(tensors)
        else:
            h, mask = self.encode(tensors)
        return Tokens(self.projector(h), mask, self.token_weights(tensors))

    def token_weights(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Pooling weights [B, T] aligned with `encode`'s tokens, or None (every real token weighs the same)."""
        return None

    @abstractmethod
    def example_tensors(self, batch_size: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes and dtypes (smoke tests, benchmarks)."""

    # masked modelling ------------------------------------------------------------
    @property
    def mlm_spec(self) -> MlmSpec:
        """What a masked-modelling head predicts per token; ValueError where the encoder does not support it."""
        raise ValueError(f"masked modelling is not available for the {type(self).__name__} encoder")

    def mlm_candidates(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool mask of the inputs that may be masked, shaped as `mlm_mask` must be (e.g. [B, L]);
        ValueError where the encoder does not support masked modelling."""
        raise ValueError(f"masked modelling is not available for the {type(self).__name__} encoder")

    def mlm_targets(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`{"mask": [B, T] bool, "target": [B, T] long or [B, T, F] float}` aligned with the output tokens;
        ValueError where the encoder does not support masked modelling."""
        raise ValueError(f"masked modelling is not available for the {type(self).__name__} encoder")


def resolve(cfg: AdapterConfig, model_preset: str) -> dict[str, int]:
    """Encoder width / layers / heads from the adapter's preset (or the model's), with overrides."""
    size = dict(PRESETS[cfg.preset or model_preset])
    if cfg.layers is not None:
        size["layers"] = cfg.layers
    return size
