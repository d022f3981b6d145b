"""QAConfig: the question-answering head (stage 2 on an exported clinical model), validated from YAML."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from biomm.adapters.base import Preset
from biomm.config import Precision, StrictModel
from biomm.fusion.projector import PROJECTOR_PATTERN


class QALanguageModelConfig(StrictModel):
    """The causal LM: a local checkpoint, or a random preset LM over a vocabulary of the QA corpus."""

    kind: Literal["gpt2", "llama"] = Field("gpt2", description="Random tiny LM class when `pretrained` is unset")
    pretrained: str | None = Field(None, description="Local directory of a causal LM checkpoint (with its tokenizer)")
    preset: Preset = "tiny"
    vocab_size: int = Field(1000, ge=16, description="Word-piece vocabulary built from the QA corpus (random LM only)")
    freeze: bool = Field(False, description="Freeze the LM: train only the projector")


class QAQuestionsConfig(StrictModel):
    """Which questions are generated from the records, and where diagnoses and X-ray labels come from."""

    reference_times: int = Field(2, ge=1, description="Question times per subject: its last event, plus earlier events")
    diagnoses_per_subject: int = Field(2, ge=0, description="'yes' diagnosis questions per time (and as many 'no')")
    condition_sources: list[str] | None = Field(
        None, description="FHIR bundles (files or folders) whose Condition codes are diagnoses; default: the shipped Synthea bundles")
    xray_labels: str | None = Field(
        None, description="Linkage CSV (study_uid, label/class, file) labelling chest X-rays normal/pneumonia")
    seed: int = 0


class QATrainConfig(StrictModel):
    """Training of the projector and the LM (frozen clinical model), and greedy decoding."""

    steps: int = Field(400, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    precision: Precision = Field("auto", description="auto: bf16 autocast where the CPU/GPU supports it")
    max_answer_tokens: int = Field(12, ge=1, description="Greedy decoding limit")


class QAConfig(StrictModel):
    """The question-answering head: projector, language model, questions, training."""

    name: str = "qa"
    projector: str = Field("mlp2x_gelu", pattern=PROJECTOR_PATTERN,
                           description="Fused tokens -> LM width; starts from the model's projector when widths match")
    lm: QALanguageModelConfig = QALanguageModelConfig()
    questions: QAQuestionsConfig = QAQuestionsConfig()
    train: QATrainConfig = QATrainConfig()
