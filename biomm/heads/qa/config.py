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
    freeze: bool = Field(False, description="Freeze the LM: train only the projector, markers and output heads")


class QAQuestionsConfig(StrictModel):
    """Which questions are generated from the records, and where code kinds and X-ray labels come from."""

    held_out_wordings: int = Field(1, ge=1, le=2, description="Wordings per question type never trained on")
    kind_sources: list[str] | None = Field(
        None, description="FHIR bundles (files or folders) whose resource types give each code's kind (condition, "
                          "procedure, allergy ...); default: the shipped Synthea bundles")
    xray_labels: str | None = Field(
        None, description="Linkage CSV (study_uid, label/class, file) labelling chest X-rays normal/pneumonia; "
                          "default: the cohort's xray_pneumonia labels (`biomm cohort label-xrays`)")
    seed: int = 0


class QARetrievalConfig(StrictModel):
    """BM25 retrieval of the facts given to the LM."""

    top_k: int = Field(8, ge=1, le=64, description="Facts retrieved per question (besides the birth and sex header)")
    question_tokens: int = Field(48, ge=4, description="Question tokens the LM reads at most")
    candidate_tokens: int = Field(16, ge=2, description="Tokens of each retrieved fact the LM reads at most")


class QATrainConfig(StrictModel):
    """Training of the projector, the LM and its output heads (frozen clinical model)."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    precision: Precision = Field("auto", description="auto: bf16 autocast where the CPU/GPU supports it")


class QAConfig(StrictModel):
    """The question-answering head: projector, language model, questions, retrieval, training."""

    name: str = "qa"
    projector: str = Field("mlp2x_gelu", pattern=PROJECTOR_PATTERN,
                           description="Fused tokens -> LM width; starts from the model's projector when widths match")
    lm: QALanguageModelConfig = QALanguageModelConfig()
    questions: QAQuestionsConfig = QAQuestionsConfig()
    retrieval: QARetrievalConfig = QARetrievalConfig()
    train: QATrainConfig = QATrainConfig()
