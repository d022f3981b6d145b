"""Response models of the routes that are not queries (queries use biomm.schema exactly)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from biomm.schema import QueryKind


class Health(BaseModel):
    """Liveness."""

    status: str


class ModelInfo(BaseModel):
    """The served model: name, clinical tasks, query kinds, cohort size."""

    model: str
    tasks: list[str]
    kinds: list[QueryKind]
    subjects: int


class SubjectRow(BaseModel):
    """A subject in the list: id, kind and modalities on record."""

    subject_id: str
    kind: str | None = None
    modalities: list[str] = Field(default_factory=list)
    sex: str | None = None
    age_band: str | None = Field(None, description="Decade of age at the last event (dates are shifted)")
    encounters: int | None = None
    last_visit: str | None = Field(None, description="Date of the last encounter (shifted)")


class SubjectList(BaseModel):
    """A page of subjects and the total that matched."""

    total: int
    subjects: list[SubjectRow]


class ModalityCount(BaseModel):
    """Records of one modality and the items they hold."""

    records: int
    items: int


class EventSpan(BaseModel):
    """How many events a subject has, and the first and last times."""

    count: int
    first: str | None = None
    last: str | None = None


class SubjectDetail(BaseModel):
    """One subject: kind, split, records per modality, labels, events."""

    subject_id: str
    kind: str | None = None
    split: str | None = None
    modalities: dict[str, ModalityCount]
    labels: dict[str, str | None] = Field(default_factory=dict)
    events: EventSpan | None = None


class Event(BaseModel):
    """One MEDS event on the timeline."""

    time: str | None = None
    code: str
    value: float | None = None
    text: str | None = None
    unit: str | None = None
    description: str | None = Field(None, description="The code's display text, when the cohort knows it")
    kind: str | None = Field(None, description="encounters | conditions (and procedures) | medications | labs | "
                                               "images | demographics")


class Note(BaseModel):
    """One (scrubbed) note on the timeline."""

    time: str | None = None
    kind: str | None = None
    text: str


class SystemTimes(BaseModel):
    """Event times of one code system."""

    count: int
    times: list[str | None]


class Timeline(BaseModel):
    """A page of a subject's events in time order, its notes, and event times per code system."""

    subject_id: str
    total: int
    events: list[Event]
    notes: list[Note]
    by_system: dict[str, SystemTimes] = Field(default_factory=dict, description="Event times per code system (first 400)")


class ImageInfo(BaseModel):
    """One imaging record and the display presets it offers."""

    record_id: str
    dicom_modality: str | None = None
    body_part: str | None = None
    study_date: str | None = None
    shape: list[int] = Field(default_factory=list)
    slices: int = 1
    presets: list[str]


class CohortInfo(BaseModel):
    """The cohort summary (as `biomm cohort info` prints it)."""

    summary: dict[str, Any]
