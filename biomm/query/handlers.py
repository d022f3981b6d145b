"""One small handler per query kind: `handler(engine, request) -> QueryResponse`. The engine holds the state
(cohort, embeddings, indexes, caches) and dispatches by `HANDLERS[request.kind]`."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from biomm.data.ehr import EhrEvents, day_to_iso
from biomm.data.tasks import TaskDef, code_matcher
from biomm.heads.clinical import LinearHead, SampleEmbeddings, head_path
from biomm.model.bundle import Embeddings, LoadedModel
from biomm.query.evidence import cell_labels, event_attributions, occlusion_attributions
from biomm.query.index import VectorIndex
from biomm.schema import EventEvidence, Evidence, Neighbor, QueryError, QueryKind, QueryRequest, QueryResponse

if TYPE_CHECKING:
    from biomm.heads.cells.virtual_cell import VirtualCell
    from biomm.heads.sequences import SequenceHeads
    from biomm.heads.qa.service import QAService


@dataclass
class EngineCaches:
    """What the engine keeps between queries over one state of the cohort; replaced by its `refresh()`."""

    answers: dict[tuple[str, str], QueryResponse] = field(default_factory=dict)  # (subject, question) -> ask answer
    occlusions: dict[tuple[str, float], tuple[SampleEmbeddings, str | None]] = field(default_factory=dict)
    heads: dict[str, LinearHead] = field(default_factory=dict)  # task head path -> head
    qa: QAService | None = None
    virtual_cell: VirtualCell | None = None
    sequence_heads: SequenceHeads | None = None  # a sequence model's heads, opened by the first annotate query
    code_frequency: dict[str, int] | None = None  # subjects per diagnosis / procedure code (what neighbours share)


class EngineState(Protocol):
    """What a handler reads of the engine (biomm.query.engine.QueryEngine is the one implementation)."""

    loaded: LoadedModel
    cohort: Path
    tasks: dict[str, TaskDef]
    model_name: str
    n_neighbours: int
    events: EhrEvents | None
    dm: Any
    displays: dict[str, str]
    n_events: int
    embeddings: Embeddings
    indexes: dict[str, VectorIndex]
    caches: EngineCaches

    def check_subject(self, subject: str | None) -> str:
        """`subject` when the cohort has it, else QueryError."""

    def require_kind(self, kind: str) -> None:
        """QueryError unless the model is a `kind` model."""

    def top_events(self, subject: str, before: float | None) -> list[EventEvidence]:
        """The subject's most recent events at or before `before`."""

    def neighbours(self, subject: str, k: int, source: str = "fused") -> list[Neighbor]:
        """The k most similar subjects by the `source` embedding, with what each shares with `subject`."""

    def task_head(self, path: Path) -> LinearHead:
        """The fitted task head saved at `path`."""

    def occlusion(self, subject: str, prediction_time: float) -> tuple[SampleEmbeddings, str | None]:
        """Occlusion embeddings [M + 1, D] at the prediction time and the image series seen."""

    def qa(self) -> QAService:
        """The QA service over the cohort."""

    def virtual_cell(self) -> VirtualCell:
        """The virtual cell over the cohort."""


Handler = Callable[[EngineState, QueryRequest], QueryResponse]
"""`handler(engine, request) -> QueryResponse`; raises QueryError for a question it cannot answer as asked."""


def latest_prediction_time(task: TaskDef, events: EhrEvents | None, subject: str) -> tuple[float | None, str]:
    """The task's own prediction time for a query about now: the latest anchor event that has enough
    history and comes before any outcome (for onset tasks) — never the outcome itself. (None, why) if none."""
    if events is None or subject not in events:
        return None, "the subject has no events"
    s, e = events.subjects[subject]
    codes, times = events.codes_text[s:e], events.times[s:e]
    anchors = times[code_matcher(task.prediction_time.anchor_codes)(codes)]
    anchors = anchors[anchors - times[0] >= task.prediction_time.min_history_days]
    if task.label.kind == "code_within" and task.label.codes:
        outcome = times[code_matcher(task.label.codes)(codes)]
        if len(outcome):
            anchors = anchors[anchors < outcome.min()]
            if not len(anchors):
                return None, f"the outcome is already on record ({day_to_iso(float(outcome.min()))[:10]})"
    if not len(anchors):
        return None, f"no {', '.join(task.prediction_time.anchor_codes)} event with enough history to predict from"
    return float(anchors.max()), ""


def answer_task(engine: EngineState, req: QueryRequest) -> QueryResponse:
    """kind=task: the task head's probability as of the latest prediction time, with occlusion attributions,
    the events before that time, the image series seen and the most similar subjects."""
    engine.require_kind("patients")
    subject = engine.check_subject(req.subject)
    if req.task not in engine.tasks:
        raise QueryError(f"unknown task {req.task!r}; known: {', '.join(sorted(engine.tasks))}")
    task = engine.tasks[req.task]
    path = head_path(engine.loaded.folder, task.name)
    if not path.exists():
        raise QueryError(f"the model has no head for task {task.name}: fit it with "
                         f"`biomm eval {engine.loaded.folder} --cohort {engine.cohort} --task {task.name}`")
    head = engine.task_head(path)
    pt, why_not = latest_prediction_time(task, engine.events, subject)
    evidence = Evidence(top_events=engine.top_events(subject, pt),
                        similar_subjects=engine.neighbours(subject, engine.n_neighbours))
    base = {"kind": "task", "subject_id": subject, "model": engine.model_name, "evidence": evidence}
    if pt is None:
        return QueryResponse(**base, value=None, answer=f"{task.name}: no prediction, {why_not}",
                             details={"task": task.name}, warnings=[why_not])
    emb, series = engine.occlusion(subject, pt)
    evidence.image_series = [series] if series else []
    missing = [m for m in task.requires if not bool(emb.present.get(m, np.zeros(1, bool))[0])]
    if missing:
        return QueryResponse(**base, answer=f"{task.name}: cannot be predicted, the subject has no {', '.join(missing)}",
                             value=None, details={"task": task.name, "missing": missing},
                             warnings=[f"no {m} for this subject" for m in missing])
    probs = head.predict(emb.features(head.source))  # row 0: everything; row i: modality i-1 left out
    p = float(probs[0])
    evidence.modalities = occlusion_attributions(engine.loaded.modalities, emb, probs)
    ranked = event_attributions(engine.loaded, engine.dm, subject, pt, head, engine.displays, engine.n_events)
    ranking = "most recent first"
    extra = {}
    if ranked is not None:
        evidence.top_events, extra["event_attributions"] = ranked
        ranking = "by gradient x input attribution to this prediction, highest first"
    when = day_to_iso(pt)
    return QueryResponse(
        **base, value=round(p, 4),
        answer=f"{task.description.strip().split('.')[0]}: probability {p:.1%} (as of {when[:10]})",
        details={"task": task.name, "prediction_time": when, "head": head.source,
                 "prediction_time_rule": f"the latest of {', '.join(task.prediction_time.anchor_codes)} "
                                         "before the outcome", "evidence_ranking": ranking, **extra})


def answer_similar(engine: EngineState, req: QueryRequest) -> QueryResponse:
    """kind=similar: the k nearest subjects by the fused embedding or one modality's (cells carry their label)."""
    subject = engine.check_subject(req.subject)
    source = req.modality or "fused"
    if source not in engine.indexes:
        raise QueryError(f"no {source} embeddings; search by one of: {', '.join(sorted(engine.indexes))}")
    if subject not in engine.indexes[source]:
        raise QueryError(f"subject {subject} has no {source} data to search by")
    neighbours = engine.neighbours(subject, req.k, source)
    labels = cell_labels(engine.loaded, engine.embeddings, [n.subject_id for n in neighbours])
    for n in neighbours:
        n.label = labels.get(n.subject_id)
    return QueryResponse(kind="similar", subject_id=subject, model=engine.model_name, value=None,
                         answer=f"{len(neighbours)} most similar subjects by {source} embedding",
                         details={"by": source, "k": req.k}, evidence=Evidence(similar_subjects=neighbours))


def answer_ask(engine: EngineState, req: QueryRequest) -> QueryResponse:
    """kind=ask: the QA head's answer with its evidence; the same question about the same subject is answered
    once per cohort state (cached until the next refresh)."""
    engine.require_kind("patients")
    subject = engine.check_subject(req.subject)
    key = (subject, " ".join((req.question or "").lower().split()))
    hit = engine.caches.answers.get(key)
    if hit is not None:
        return hit.model_copy(deep=True)
    resp = engine.qa().answer(subject, req.question or "")
    resp.details.setdefault("question", req.question)
    if resp.evidence is not None and not resp.evidence.similar_subjects:
        resp.evidence.similar_subjects = engine.neighbours(subject, engine.n_neighbours)
    engine.caches.answers[key] = resp.model_copy(deep=True)
    return resp


def answer_annotate(engine: EngineState, req: QueryRequest) -> QueryResponse:
    """kind=annotate: cell types of the cohort's cells (or of `req.cells`) by the virtual cell; for a sequence
    model, the labels of the cohort's sequences (or of the FASTA `req.sequences`)."""
    if engine.loaded.kind == "sequences":
        if engine.caches.sequence_heads is None:
            from biomm.heads.sequences import SequenceHeads

            engine.caches.sequence_heads = SequenceHeads(engine.loaded, engine.cohort, engine.embeddings)
        return engine.caches.sequence_heads.answer(req)
    if req.sequences:
        raise QueryError(f"this model ({engine.model_name}) is a {engine.loaded.kind} model; annotating sequences "
                         "needs a sequence model")
    engine.require_kind("cells")
    return engine.virtual_cell().answer(QueryRequest(kind="annotate", cells=req.cells, max_cells=req.max_cells))


def answer_perturb(engine: EngineState, req: QueryRequest) -> QueryResponse:
    """kind=perturb: the predicted response to perturbing `req.gene`, against the mean baseline."""
    engine.require_kind("cells")
    return engine.virtual_cell().answer(QueryRequest(kind="perturb", gene=req.gene))


HANDLERS: Mapping[QueryKind, Handler] = MappingProxyType({
    "task": answer_task,
    "ask": answer_ask,
    "similar": answer_similar,
    "annotate": answer_annotate,
    "perturb": answer_perturb,
})
"""Every query kind's handler (read-only)."""
