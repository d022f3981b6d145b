"""The one factory: `build_model(config)` assembles a BiommModel from a ModelConfig (adapters from the
modality specs, the backbone for the configured fusion timing, an optional LLaVA projector, injected
heads); `load_model(folder)` rebuilds a saved one."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_model as load_weights
from torch import nn

from biomm.adapters import build_adapter
from biomm.fusion.backbone import EarlyFusion, LateFusion, MiddleFusion
from biomm.fusion.projector import build_projector
from biomm.model.config import ModelConfig
from biomm.model.module import CONFIG_FILE, WEIGHTS_FILE, BiommModel


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The fusion backbone for `cfg.backbone.timing`: middle (Perceiver + gated cross-attention), early or late."""
    mods, b = list(cfg.adapters), cfg.backbone
    if b.timing == "middle":
        return MiddleFusion(mods, cfg.d, cfg.heads, cfg.fusion_layers, b.num_latents, b.resampler_depth, b.absent,
                            b.stream_op, b.pooling)
    if b.timing == "early":
        return EarlyFusion(mods, cfg.d, cfg.heads, cfg.fusion_layers, b.absent, b.stream_op, b.pooling)
    return LateFusion(mods, cfg.d, b.fusion_op, b.absent, b.pooling, cfg.heads)


def build_model(cfg: ModelConfig | dict, heads: nn.ModuleDict | None = None) -> BiommModel:
    """The one factory: adapters from the registry, the backbone for `cfg.backbone.timing`,
    an optional LLaVA projector, and injected `heads`."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.model_validate(cfg)
    adapters = nn.ModuleDict({m: build_adapter(m, a, cfg.d, cfg.preset) for m, a in cfg.adapters.items()})
    for adapter in adapters.values():
        adapter.tie(adapters)
    projector = build_projector(cfg.projector.kind, cfg.d, cfg.projector.out_dim) if cfg.projector.out_dim else None
    return BiommModel(adapters, build_backbone(cfg), heads, projector, cfg)


def load_model(folder: str | Path, heads: nn.ModuleDict | None = None) -> BiommModel:
    """Rebuild a model saved by `BiommModel.save` from config.json and load its weights (pass the same `heads`)."""
    folder = Path(folder)
    cfg = ModelConfig.model_validate_json((folder / CONFIG_FILE).read_text())
    model = build_model(cfg, heads=heads)
    load_weights(model, str(folder / WEIGHTS_FILE))
    return model
