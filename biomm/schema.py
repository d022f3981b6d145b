"""The query contract shared by the CLI (`biomm query --json`), the Python API (`m.query(...)`) and
the HTTP API: one request model, one response model (schemas/query_request|query_response)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

__all__ = ["Evidence", "EventEvidence", "ModalityAttribution", "Neighbor", "QueryError", "QueryKind", "QueryRequest",
           "QueryResponse"]

QueryKind = Literal["task", "ask", "similar", "annotate", "perturb"]
"""The kinds of question: a prediction task, a free question, similar subjects, cell annotation, perturbation."""


class QueryRequest(BaseModel):
    """Exactly one kind of question. Subjects are the cohort's pseudonymous ids."""

    model_config = {"extra": "forbid"}

    kind: QueryKind
    subject: str | None = Field(None, description="Subject id (task, ask, similar)")
    task: str | None = Field(None, description="Task name (kind=task), e.g. hypertension_onset_1y")
    question: str | None = Field(None, max_length=500, description="Free-text question (kind=ask)")
    k: int = Field(10, ge=1, le=100, description="Neighbours (kind=similar)")
    modality: str | None = Field(None, description="Search by this modality's embedding instead of the fused one (kind=similar)")
    cells: str | None = Field(None, description="Path of an .h5ad to annotate (kind=annotate); default: the cohort's cells")
    sequences: str | None = Field(None, max_length=1_000_000,
                                  description="FASTA to annotate (kind=annotate, sequence models): a path, or the FASTA "
                                              "text itself (starting with '>'); default: the cohort's sequences")
    gene: str | None = Field(None, description="Gene to perturb (kind=perturb): symbol or Ensembl id")
    max_cells: int = Field(1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _complete(self):
        need = {"task": ("subject", "task"), "ask": ("subject", "question"), "similar": ("subject",),
                "annotate": (), "perturb": ("gene",)}[self.kind]
        missing = [f for f in need if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"a '{self.kind}' query needs {', '.join(missing)}")
        return self


class ModalityAttribution(BaseModel):
    """How much one modality weighed in the answer."""

    modality: str
    present: bool
    attribution: float | None = Field(None, description="Change in the answer's score when this modality is left out (occlusion)")
    gate: float | None = Field(None, description="Mean |tanh gate| of the fusion stream's cross-attention to this modality")


class EventEvidence(BaseModel):
    """A record behind the answer: an event's code, ISO time (to the second), value and readable name."""

    code: str
    time: str
    value: float | None = None
    description: str | None = None
    unit: str | None = Field(None, description="Unit of the value, as recorded (e.g. mm[Hg])")


class Neighbor(BaseModel):
    """A similar subject: its id, cosine similarity and (cells) its label."""

    subject_id: str
    score: float
    label: str | None = None
    shared: list[str] = Field(default_factory=list, description="Diagnoses and procedures (SNOMED) both subjects "
                                                                "have, the rarest in the cohort first (at most 3)")


class Evidence(BaseModel):
    """What an answer rests on: modalities, events, image series, similar subjects."""

    modalities: list[ModalityAttribution] = Field(default_factory=list)
    top_events: list[EventEvidence] = Field(default_factory=list)
    image_series: list[str] = Field(default_factory=list)
    similar_subjects: list[Neighbor] = Field(default_factory=list)


class QueryResponse(BaseModel):
    """One answer: readable text, a machine-readable value, details, evidence, warnings."""

    kind: QueryKind
    subject_id: str | None = None
    answer: str = Field(..., description="A readable answer")
    value: float | str | None = Field(None, description="The machine-readable answer: a probability, a label, a number")
    details: dict[str, Any] = Field(default_factory=dict)
    evidence: Evidence | None = None
    model: str
    warnings: list[str] = Field(default_factory=list)


class QueryError(ValueError):
    """A question that cannot be answered as asked (unknown subject, task or gene; wrong model kind)."""
