"""TrainConfig: what `biomm train CONFIG` reads (configs/train/*.yaml).

`model_file` names a model preset (configs/model/*.yaml) that `model` then overrides key by key,
so a training config states only what differs from its preset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from biomm.config import ConfigError, StrictModel
from biomm.data.config import DataConfig
from biomm.model.config import ModelConfig


class OptimConfig(StrictModel):
    """AdamW with warm-up then cosine (or constant) learning rate, per-adapter rates."""
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    adapter_lr: dict[str, float] = Field(default_factory=dict, description="Per-adapter learning rates (parameter groups)")


class TrainerConfig(StrictModel):
    """Lightning trainer settings: steps, validation and checkpoint cadence, precision, devices, strategy."""
    max_steps: int = Field(200, ge=1)
    val_every_n_steps: int = Field(50, ge=1)
    checkpoint_every_n_steps: int = Field(25, ge=1, description="A kill loses at most this many steps")
    log_every_n_steps: int = Field(5, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where the CPU supports it, bf16-mixed on GPU")
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(1.0, gt=0)
    seed: int = 0
    deterministic: bool = False


class TrainConfig(StrictModel):
    """What `biomm train CONFIG` reads: the model (or a preset file it overrides), the data, optimiser and trainer."""
    name: str = "biomm"
    model_file: str | None = Field(None, description="Model preset YAML that `model` overrides")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    freeze: list[str] = Field(default_factory=list, description="Adapters whose encoders are frozen (only projectors train)")
    recall_k: list[int] = Field(default_factory=lambda: [1, 5, 10])

    @model_validator(mode="after")
    def _modalities_have_adapters(self):
        missing = [m for m in self.data.modalities if m not in self.model.adapters]
        if missing:
            raise ValueError(f"data.modalities {missing} have no adapter in model.adapters ({', '.join(self.model.adapters)})")
        unknown = [m for m in self.freeze if m not in self.model.adapters]
        if unknown:
            raise ValueError(f"freeze names unknown adapter(s) {unknown}")
        return self


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_model_file(data: dict[str, Any], config_path: Path | None) -> dict[str, Any]:
    """Merge `model_file` (relative to the config's folder, then the working directory) under `model`."""
    ref = data.get("model_file")
    if not ref:
        return data
    candidates = [Path(ref)] if Path(ref).is_absolute() else (
        ([config_path.parent / ref] if config_path else []) + [Path.cwd() / ref])
    for path in candidates:
        if path.exists():
            base = yaml.safe_load(path.read_text()) or {}
            return {**data, "model": _deep_merge(base, data.get("model") or {})}
    raise ConfigError(f"model_file {ref!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def load_train_config(source: str | Path | dict, overrides: list[str] | None = None) -> TrainConfig:
    """YAML path or dict -> TrainConfig, with `model_file` merged and `--set` overrides applied."""
    from biomm.config import load_config, read_yaml

    text = None
    if isinstance(source, dict):
        data, path = source, None
    else:
        path = Path(source)
        data, text = read_yaml(path)
        data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping")
    return load_config(TrainConfig, resolve_model_file(data, path), overrides,
                       name=str(path) if path else None, text=text)
