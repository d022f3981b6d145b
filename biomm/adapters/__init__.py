"""Adapters, one per modality: tensors -> `Tokens(x [B, T, D], mask [B, T])`. Each modality's spec
(`biomm.modalities`) names its adapter class, which defines a `Config` and `__init__(cfg, width, preset)`."""
from __future__ import annotations

from biomm.adapters.base import PRESETS, Adapter, AdapterConfig, MlmSpec
from biomm.modalities import MODALITIES, resolve, spec

ADAPTERS: tuple[str, ...] = tuple(MODALITIES)
"""Modalities with an adapter (every modality has one)."""


def adapter_class(modality: str) -> type[Adapter]:
    """The adapter class of a modality, from its spec (imported on first use)."""
    try:
        return resolve(spec(modality).adapter)
    except KeyError:
        raise KeyError(f"no adapter registered for modality '{modality}' (known: {', '.join(ADAPTERS)})") from None


def build_adapter(modality: str, cfg: AdapterConfig, width: int, preset: str) -> Adapter:
    """An adapter of `modality` at token width `width`, sized by `preset` where `cfg` leaves it open."""
    return adapter_class(modality)(cfg, width, preset)


__all__ = ["ADAPTERS", "PRESETS", "Adapter", "AdapterConfig", "MlmSpec", "adapter_class", "build_adapter"]
