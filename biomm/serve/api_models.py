"""Response models of the routes that are not queries (queries use biomm.query.schema exactly)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from biomm.query.schema import QueryKind


class Health(BaseModel):
    status: str


class ModelInfo(BaseModel):
    model: str
    tasks: list[str]
    kinds: list[QueryKind]
    subjects: int


class SubjectRow(BaseModel):
    subject_id: str
    kind: str | None = None
    modalities: list[str] = Field(default_factory=list)


class SubjectList(BaseModel):
    total: int
    subjects: list[SubjectRow]


class ModalityCount(BaseModel):
    records: int
    items: int


class EventSpan(BaseModel):
    count: int
    first: str | None = None
    last: str | None = None


class SubjectDetail(BaseModel):
    subject_id: str
    kind: str | None = None
    split: str | None = None
    modalities: dict[str, ModalityCount]
    labels: dict[str, str | None] = Field(default_factory=dict)
    events: EventSpan | None = None


class Event(BaseModel):
    time: str | None = None
    code: str
    value: float | None = None
    text: str | None = None
    unit: str | None = None


class Note(BaseModel):
    time: str | None = None
    kind: str | None = None
    text: str


class SystemTimes(BaseModel):
    count: int
    times: list[str | None]


class Timeline(BaseModel):
    subject_id: str
    total: int
    events: list[Event]
    notes: list[Note]
    by_system: dict[str, SystemTimes] = Field(default_factory=dict, description="Event times per code system (first 400)")


class ImageInfo(BaseModel):
    record_id: str
    dicom_modality: str | None = None
    body_part: str | None = None
    study_date: str | None = None
    shape: list[int] = Field(default_factory=list)
    slices: int = 1
    presets: list[str]


class CohortInfo(BaseModel):
    summary: dict[str, Any]
