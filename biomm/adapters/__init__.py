"""Adapters, one per modality. Adding a modality = one file defining `XAdapter` (with a
`Config` class and `__init__(cfg, width, preset)`) and one entry in `ADAPTERS`."""
from __future__ import annotations

import importlib

from biomm.adapters.base import PRESETS, Adapter, AdapterConfig, MlmSpec

ADAPTERS: dict[str, str] = {
    "ehr": "biomm.adapters.ehr:EhrAdapter",
    "imaging": "biomm.adapters.imaging:ImagingAdapter",
    "omics": "biomm.adapters.omics:OmicsAdapter",
    "sequence": "biomm.adapters.sequence:SequenceAdapter",
    "text": "biomm.adapters.text:TextAdapter",
}


def adapter_class(modality: str) -> type[Adapter]:
    """The registered adapter class of a modality (imported on first use)."""
    if modality not in ADAPTERS:
        raise KeyError(f"no adapter registered for modality '{modality}' (known: {', '.join(ADAPTERS)})")
    module, cls = ADAPTERS[modality].split(":")
    return getattr(importlib.import_module(module), cls)


def build_adapter(modality: str, cfg: AdapterConfig, width: int, preset: str) -> Adapter:
    return adapter_class(modality)(cfg, width, preset)


__all__ = ["ADAPTERS", "PRESETS", "Adapter", "AdapterConfig", "MlmSpec", "adapter_class", "build_adapter"]
