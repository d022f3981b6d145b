"""ModelConfig: adapters, backbone, projector and objectives of a BiommModel, with presets.

YAML presets live in configs/model/ (tiny, small, base; early, late). Adapter sections are
validated by the registered adapter's own `Config` class, so unknown keys name the modality.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, WithJsonSchema, field_validator

from biomm.adapters import ADAPTERS, PRESETS, AdapterConfig, adapter_class
from biomm.adapters.base import Preset
from biomm.config import StrictModel
from biomm.fusion.projector import PROJECTOR_PATTERN


class BackboneConfig(StrictModel):
    """Config of the fusion backbone: timing, depth, latents, the late fusion op, absent-modality handling."""

    timing: Literal["early", "late", "middle"] = Field("middle", description="When modalities meet")
    layers: int | None = Field(None, ge=1, description="Fusion layers; default: the preset's")
    heads: int | None = Field(None, ge=1, description="Attention heads; default: the preset's")
    num_latents: int = Field(16, ge=1, description="Perceiver latents per modality (middle)")
    resampler_depth: int = Field(2, ge=1)
    fusion_op: str = Field("concat", description="Fusion op of the late backbone (see biomm.fusion.ops.FUSION_OPS)")
    absent: Literal["mask", "token"] = Field("mask", description="Absent modality: masked out, or a learned absent token")
    stream_op: str | None = Field(None, description="Middle / early: fusion op over the per-modality fused streams giving "
                                  "the fused embedding; None: mean of the fused tokens (middle), the CLS output (early)")
    pooling: Literal["mean", "attention"] = Field(
        "mean", description="Each modality's pooled embedding (contrastive, retrieval): masked mean of its tokens, or "
                            "attention pooling by a learned probe (SigLIP's MAP head)")

    @field_validator("fusion_op", "stream_op")
    @classmethod
    def _known_op(cls, value: str | None) -> str | None:
        from biomm.fusion.ops import FUSION_OPS

        if value is not None and value not in FUSION_OPS:
            raise ValueError(f"unknown fusion op '{value}' (known: {', '.join(FUSION_OPS)})")
        return value


class ProjectorConfig(StrictModel):
    """Config of the LLaVA projector from fused tokens to a causal LM's hidden size."""

    kind: str = Field("mlp2x_gelu", pattern=PROJECTOR_PATTERN)
    out_dim: int | None = Field(None, ge=1, description="Causal LM hidden size; None = no projector")


class ContrastiveConfig(StrictModel):
    """Config of the contrastive objective (CLIP or SigLIP over modality pairs)."""

    weight: float = Field(1.0, ge=0)
    kind: Literal["clip", "siglip"] = "clip"
    modalities: list[str] | None = Field(None, description="Modalities to align pairwise; default: all")
    chunk_size: int = Field(1024, ge=1, description="Logit rows per chunk (memory linear in batch size)")
    gather: bool = Field(True, description="All-gather embeddings across processes (with gradient)")
    fused_weight: float = Field(0.0, ge=0, description="Also align the fused embedding with each present modality's")
    dedupe: bool = Field(False, description="Rows of a batch with identical discrete inputs in either modality of a "
                                            "pair (the same label prompt) are not each other's negatives (UniCL); "
                                            "masked chunk by chunk, memory stays linear")
    clean_forward: bool = Field(False, description="Align the embeddings of the uncorrupted inputs: where masked "
                                                   "modelling hides inputs, a second forward pass without the masks "
                                                   "feeds this loss (FLAVA), so training embeds what queries embed")


class MaskedConfig(StrictModel):
    """Config of the masked-modelling objective."""

    weight: float = Field(0.0, ge=0)
    ratio: float = Field(0.15, gt=0, lt=1)
    modalities: list[str] | None = Field(None, description="Default: every adapter that supports it")


class FusedMaskedConfig(StrictModel):
    """Config of cross-modal masked modelling on fused tokens (FLAVA): masked inputs predicted through the fusion stream."""

    weight: float = Field(0.0, ge=0)
    ratio: float = Field(0.15, gt=0, lt=1, description="Fraction masked (where `masked` also masks a modality, its draw is kept)")
    modalities: list[str] | None = Field(None, description="Default: every adapter that supports masked modelling")


class MatchingConfig(StrictModel):
    """Config of the matching objective (ALBEF / BLIP): a binary head on the fused embedding, true pairs vs mined negatives."""

    weight: float = Field(0.0, ge=0)
    modalities: list[str] | None = Field(None, description="Modalities matched pairwise; default: all")
    negatives: Literal["hard", "random"] = Field("hard", description="hard: drawn by softmax(similarity / temperature)")
    temperature: float = Field(0.07, gt=0, description="Temperature of hard-negative mining on cosine similarities")


class NextEventConfig(StrictModel):
    """Config of next-event pretraining (CLMBR-style): predict the next day's codes from the timeline so far."""

    weight: float = Field(0.0, ge=0)
    max_positions: int = Field(256, ge=1, description="Most recent prediction points (days) per subject and step")


class LanguageModelConfig(StrictModel):
    """Config of the causal LM of the autoregressive objective."""

    kind: Literal["gpt2", "llama"] = "gpt2"
    pretrained: str | None = Field(None, description="Local directory of a causal LM checkpoint")
    preset: Preset = "tiny"
    vocab_size: int = Field(1000, ge=8)
    mode: Literal["prefix", "xattn"] = Field("prefix", description="LLaVA prefix embeddings or Flamingo gated cross-attention")
    freeze: bool = Field(True, description="Freeze the LM (only projector / cross-attention train)")


class AutoregressiveConfig(StrictModel):
    """Config of the autoregressive objective: its weight and its causal LM."""

    weight: float = Field(0.0, ge=0)
    lm: LanguageModelConfig = LanguageModelConfig()


class SupervisedConfig(StrictModel):
    """Config of the supervised binary objective: the label and the embedding it reads."""

    weight: float = Field(0.0, ge=0)
    label: str | None = Field(None, description="Subject label to predict (binary 0/1; data.label_name supplies it)")
    source: str = Field("fused", description="'fused' or a modality: the embedding the linear head reads")


class ObjectivesConfig(StrictModel):
    """Config of the training objectives; those with weight > 0 are used."""

    contrastive: ContrastiveConfig = ContrastiveConfig()
    masked: MaskedConfig = MaskedConfig()
    autoregressive: AutoregressiveConfig = AutoregressiveConfig()
    supervised: SupervisedConfig = SupervisedConfig()
    fused_masked: FusedMaskedConfig = FusedMaskedConfig()
    matching: MatchingConfig = MatchingConfig()
    next_event: NextEventConfig = NextEventConfig()


def default_adapters() -> dict[str, AdapterConfig]:
    """Every registered modality mapped to its adapter's default config."""
    return {m: adapter_class(m).Config() for m in ADAPTERS}


def adapters_schema() -> dict:
    """JSON Schema of `adapters`: each registered modality with its own adapter config."""
    return {
        "type": "object",
        "description": "Modality -> adapter config; a modality absent here has no adapter",
        "properties": {m: adapter_class(m).Config.model_json_schema() for m in ADAPTERS},
        "additionalProperties": False,
        "minProperties": 1,
    }


class ModelConfig(StrictModel):
    """Config of a BiommModel: size preset, shared width, adapters, backbone, projector and objectives."""

    preset: Preset = Field("small", description="Size preset of every part unless overridden")
    width: int | None = Field(None, ge=8, description="Shared token width D; default: the preset's")
    adapters: Annotated[dict[str, SerializeAsAny[AdapterConfig]], WithJsonSchema(adapters_schema())] = Field(
        default_factory=default_adapters)
    backbone: BackboneConfig = BackboneConfig()
    projector: ProjectorConfig = ProjectorConfig()
    objectives: ObjectivesConfig = ObjectivesConfig()

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapter_configs(cls, value: Any) -> dict[str, AdapterConfig]:
        if not isinstance(value, dict) or not value:
            raise ValueError("adapters must map at least one modality to its config")
        out = {}
        for name, sub in value.items():
            if name not in ADAPTERS:
                raise ValueError(f"unknown modality '{name}' (registered: {', '.join(ADAPTERS)})")
            config = adapter_class(name).Config
            if isinstance(sub, config):
                out[name] = sub
                continue
            try:
                out[name] = config.model_validate(sub or {})
            except ValidationError as err:  # re-raised so the message names adapters.<modality>.<key>
                raise ValueError("; ".join(
                    f"unknown key '{name}.{'.'.join(map(str, e['loc']))}'" if e["type"] == "extra_forbidden"
                    else f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
        return out

    @property
    def d(self) -> int:
        """Shared token width D (`width`, or the preset's)."""
        return self.width or PRESETS[self.preset]["width"]

    @property
    def fusion_layers(self) -> int:
        """Fusion layers (`backbone.layers`, or the preset's)."""
        return self.backbone.layers or PRESETS[self.preset]["layers"]

    @property
    def heads(self) -> int:
        """Attention heads of the backbone (`backbone.heads`, or the preset's)."""
        return self.backbone.heads or PRESETS[self.preset]["heads"]
