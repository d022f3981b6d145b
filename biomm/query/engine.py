"""The query engine behind `biomm query`, `m.query(...)` and the HTTP API.

It opens an exported model over a cohort, embeds every subject as of its latest record, keeps a
nearest-neighbour index per embedding, and answers one QueryRequest at a time by the handler of its
kind (`biomm.query.handlers`: task, similar, ask, annotate, perturb) with a QueryResponse that carries
its evidence (`biomm.query.evidence`): modality attributions by occlusion, the top events before the
prediction time, the image series used, and the most similar subjects."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biomm.data.ehr import day_to_iso
from biomm.data.tasks import TaskDef, load_tasks
from biomm.heads.clinical import LinearHead, SampleEmbeddings
from biomm.model.bundle import Embeddings, LoadedModel, load
from biomm.query.embed import embeddings_path
from biomm.query.evidence import (BUILTIN_DISPLAYS, code_frequency, event_evidence, neighbour_evidence,
                                  occlusion_embeddings, shared_findings)
from biomm.query.handlers import HANDLERS, EngineCaches, Handler
from biomm.query.index import VectorIndex, build_indexes, index_dir
from biomm.schema import EventEvidence, Neighbor, QueryError, QueryKind, QueryRequest, QueryResponse
from biomm.store.cohort import Cohort
from biomm.store.locks import ReadWriteLock

if TYPE_CHECKING:
    from biomm.heads.cells.virtual_cell import VirtualCell
    from biomm.heads.qa.service import QAService

MAX_OCCLUSIONS = 4096


class QueryEngine:
    """`QueryEngine(model, cohort).query(QueryRequest(...))`. Thread-safe; `refresh()` after an ingest."""

    def __init__(self, model: str | Path | LoadedModel, cohort: str | Path, task_dirs: list[str | Path] | None = None,
                 evidence_events: int = 8, evidence_neighbours: int = 5):
        self.loaded = model if isinstance(model, LoadedModel) else load(model)
        self.cohort = Path(cohort)
        self.tasks: dict[str, TaskDef] = load_tasks(task_dirs)
        self.model_name = self.loaded.config.name
        self.n_events, self.n_neighbours = evidence_events, evidence_neighbours
        self.handlers: dict[QueryKind, Handler] = dict(HANDLERS)
        self.lock = ReadWriteLock()
        self._opening = threading.Lock()  # a head is opened by one thread, once per refresh
        self.refresh()

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Re-read the cohort: new subjects become queryable, embeddings and the indexes are rebuilt, caches emptied."""
        with self.lock.write():
            self.caches = EngineCaches()
            self.dm = self.loaded.datamodule(self.cohort)
            self.events = self.dm.events if self.loaded.kind == "patients" else None
            self.embeddings, self.indexes = self._load_or_embed()
            with Cohort(self.cohort, create=False, read_only=True) as c:
                self.displays = {**BUILTIN_DISPLAYS, **c.code_displays()}

    def _load_or_embed(self) -> tuple[Embeddings, dict[str, VectorIndex]]:
        """What `biomm embed` saved, when it covers exactly the cohort's current subjects; else embed now."""
        saved = embeddings_path(self.loaded, self.cohort)
        folder = index_dir(self.loaded.folder, self.cohort)
        if saved.exists() and (folder / "fused" / "index.json").exists():
            emb = Embeddings.load(saved)
            if set(emb.subject_ids) == self._current_subjects():
                indexes = {p.name: VectorIndex.load(p) for p in folder.iterdir() if (p / "index.json").exists()}
                if indexes.get("fused") is not None and indexes["fused"].ids == emb.subject_ids:
                    return emb, indexes
        emb = self.loaded.embed_batches(self.dm.loader("all"))
        return emb, build_indexes(emb)

    def _current_subjects(self) -> set[str]:
        if self.loaded.kind == "patients":
            return {s.subject_id for s in self.dm.samples["all"]}
        return set(self.dm.subject_ids)

    @property
    def subjects(self) -> list[str]:
        """The queryable subjects, in embedding order."""
        return self.embeddings.subject_ids

    def richest_subject(self, prefer: str = "imaging") -> str:
        """A living subject with the most modalities present (one with `prefer` first): for demos."""
        emb = self.embeddings
        counts = sum(emb.present[m].astype(int) for m in emb.present)
        bonus = emb.present[prefer].astype(int) if prefer in emb.present else 0
        alive = np.array([not self._died(s) for s in emb.subject_ids], dtype=int)
        return emb.subject_ids[int(np.argmax(counts * 4 + bonus * 2 + alive))]

    def _died(self, subject: str) -> str | None:
        """The date of death when the subject's record ends with one."""
        if self.events is None or subject not in self.events:
            return None
        s, e = self.events.subjects[subject]
        hit = np.flatnonzero(self.events.codes_text[s:e] == "MEDS_DEATH")
        return day_to_iso(float(self.events.times[s + hit[0]]))[:10] if len(hit) else None

    # ------------------------------------------------------------------ dispatch
    def query(self, req: QueryRequest) -> QueryResponse:
        """Answer one request by its kind's handler. Queries run concurrently (inference only reads); a
        refresh waits for them and blocks new ones."""
        with self.lock.read():
            return self.handlers[req.kind](self, req)

    # ------------------------------------------------------------------ what the handlers share
    def check_subject(self, subject: str | None) -> str:
        """`subject` when the cohort has it; else a QueryError that says what ids look like."""
        if not subject or subject not in self.indexes["fused"]:
            raise QueryError(f"unknown subject {subject!r}: not in cohort {self.cohort.name} "
                             f"({len(self.subjects)} subjects; ids look like {self.subjects[0] if self.subjects else 'n/a'})")
        return subject

    def require_kind(self, kind: str) -> None:
        """QueryError unless the model is a `kind` ("patients" or "cells") model."""
        if kind != self.loaded.kind:
            what = "a clinical (patients)" if kind == "patients" else "a virtual-cell (cells)"
            raise QueryError(f"this model ({self.model_name}) is a {self.loaded.kind} model; that query needs {what} model")

    def top_events(self, subject: str, before: float | None) -> list[EventEvidence]:
        """The subject's most recent events at or before `before` (days), with readable names."""
        return event_evidence(self.events, self.displays, subject, before, self.n_events)

    def neighbours(self, subject: str, k: int, source: str = "fused") -> list[Neighbor]:
        """The k most similar subjects by the `source` embedding ("fused" or a modality), each with the diagnoses /
        procedures it shares with `subject` (patients)."""
        found = neighbour_evidence(self.indexes[source], subject, k)
        if self.events is not None:
            if self.caches.code_frequency is None:
                self.caches.code_frequency = code_frequency(self.events)
            shared = shared_findings(self.events, self.displays, self.caches.code_frequency, subject,
                                     [n.subject_id for n in found])
            for n in found:
                n.shared = shared.get(n.subject_id, [])
        return found

    def task_head(self, path: Path) -> LinearHead:
        """The fitted task head saved at `path`, read once per refresh."""
        key = str(path)
        if key not in self.caches.heads:
            self.caches.heads[key] = LinearHead.load(path)
        return self.caches.heads[key]

    def occlusion(self, subject: str, prediction_time: float) -> tuple[SampleEmbeddings, str | None]:
        """The subject's occlusion embeddings [M + 1, D] at `prediction_time` and the image series seen
        (see `biomm.query.evidence.occlusion_embeddings`), kept until the next refresh."""
        key = (subject, round(prediction_time, 6))
        hit = self.caches.occlusions.get(key)
        if hit is None:
            hit = occlusion_embeddings(self.loaded, self.dm, subject, prediction_time)
            if len(self.caches.occlusions) > MAX_OCCLUSIONS:
                self.caches.occlusions.clear()
            self.caches.occlusions[key] = hit
        return hit

    def qa(self) -> QAService:
        """The model's QA head over this cohort, opened on first use (QueryError when the model has none)."""
        with self._opening:
            if self.caches.qa is None:
                from biomm.heads.qa.service import QAService

                self.caches.qa = QAService(self.loaded, self.cohort)
            return self.caches.qa

    def virtual_cell(self) -> VirtualCell:
        """The cell model's virtual-cell heads over this cohort, opened on first use."""
        with self._opening:
            if self.caches.virtual_cell is None:
                from biomm.heads.cells.virtual_cell import VirtualCell

                self.caches.virtual_cell = VirtualCell(self.loaded, self.cohort)
            return self.caches.virtual_cell
