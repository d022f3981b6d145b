"""The query engine behind `biomm query`, `m.query(...)` and the HTTP API.

It opens an exported model over a cohort, embeds every subject as of its latest record, keeps a
nearest-neighbour index, and answers one QueryRequest at a time with a QueryResponse that carries
its evidence: modality attributions by occlusion, the top events before the prediction time, the
image series used, and the most similar subjects."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from biomm.bundle import Embeddings, LoadedModel, load
from biomm.data.datamodule import Sample
from biomm.data.tasks import TaskDef, day_to_iso, load_tasks
from biomm.heads.clinical import LinearHead, embed_batch, head_path
from biomm.locks import ReadWriteLock
from biomm.query.index import VectorIndex
from biomm.query.schema import (
    Evidence,
    EventEvidence,
    ModalityAttribution,
    Neighbor,
    QueryError,
    QueryRequest,
    QueryResponse,
)
from biomm.store.cohort import Cohort

INDEX_DIR = "index"
BUILTIN_DISPLAYS = {"MEDS_BIRTH": "Birth", "MEDS_DEATH": "Death"}


class QueryEngine:
    """`QueryEngine(model_dir, cohort_dir).query(QueryRequest(...))`. Thread-safe; `refresh()` after an ingest."""

    def __init__(self, model: str | Path | LoadedModel, cohort: str | Path, task_dirs: list[str | Path] | None = None,
                 evidence_events: int = 8, evidence_neighbours: int = 5):
        self.loaded = model if isinstance(model, LoadedModel) else load(model)
        self.cohort = Path(cohort)
        self.tasks: dict[str, TaskDef] = load_tasks(task_dirs)
        self.model_name = self.loaded.config.name
        self.n_events, self.n_neighbours = evidence_events, evidence_neighbours
        self._lock = ReadWriteLock()
        self._qa_lock = threading.Lock()
        self.refresh()

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Re-read the cohort: new subjects become queryable, embeddings and the index are rebuilt."""
        with self._lock.write():
            self._cache: dict = {}
            self._heads: dict[str, LinearHead] = {}
            self._qa = self._vc = None  # heads are reopened on the next question, over the refreshed cohort
            self.dm = self.loaded.datamodule(self.cohort)
            self.events = self.dm.collate.ehr if self.loaded.kind == "patients" else None
            self.embeddings, self.indexes = self._load_or_embed()
            with Cohort(self.cohort, create=False, read_only=True) as c:
                self.displays = {**BUILTIN_DISPLAYS, **c.code_displays()}

    def _load_or_embed(self) -> tuple[Embeddings, dict[str, VectorIndex]]:
        """What `biomm embed` saved, when it covers exactly the cohort's current subjects; else embed now."""
        from biomm.query.embed import cohort_key

        saved = self.cohort / "embeddings" / f"{self.loaded.config.name}.npz"
        index_dir = self.loaded.folder / INDEX_DIR / cohort_key(self.cohort)
        current = self._current_subjects()
        if saved.exists() and (index_dir / "fused" / "index.json").exists():
            emb = Embeddings.load(saved)
            if set(emb.subject_ids) == current:
                indexes = {p.name: VectorIndex.load(p) for p in index_dir.iterdir() if (p / "index.json").exists()}
                if indexes.get("fused") is not None and indexes["fused"].ids == emb.subject_ids:
                    return emb, indexes
        emb = self.loaded.embed_batches(self.dm.loader("all"))
        return emb, build_indexes(emb)

    def _current_subjects(self) -> set[str]:
        if self.loaded.kind == "patients":
            return {s.subject_id for s in self.dm.samples["all"]}
        return set(self.dm.subject_ids)

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

    @property
    def subjects(self) -> list[str]:
        return self.embeddings.subject_ids

    def _subject(self, subject: str | None) -> str:
        if not subject or subject not in self.indexes["fused"]._row:
            raise QueryError(f"unknown subject {subject!r}: not in cohort {self.cohort.name} "
                             f"({len(self.subjects)} subjects; ids look like {self.subjects[0] if self.subjects else 'n/a'})")
        return subject

    # ------------------------------------------------------------------ dispatch
    def query(self, req: QueryRequest) -> QueryResponse:
        """Queries run concurrently (inference only reads); a refresh waits for them and blocks new ones."""
        with self._lock.read():
            if req.kind == "task":
                return self.task(req.subject, req.task)
            if req.kind == "similar":
                return self.similar(req.subject, req.k, req.modality)
            if req.kind == "ask":
                return self.ask(req.subject, req.question)
            if req.kind == "annotate":
                return self.annotate(req.cells, req.max_cells)
            return self.perturb(req.gene)

    def _needs(self, kind: str) -> None:
        if kind != self.loaded.kind:
            what = "a clinical (patients)" if kind == "patients" else "a virtual-cell (cells)"
            raise QueryError(f"this model ({self.model_name}) is a {self.loaded.kind} model; that query needs {what} model")

    # ------------------------------------------------------------------ evidence
    def _events(self, subject: str, before: float | None) -> list[EventEvidence]:
        if self.events is None or subject not in self.events:
            return []
        return [EventEvidence(code=e["code"], time=e["time"], value=e["value_z"], description=self.displays.get(e["code"]))
                for e in self.events.top_events(subject, before, self.n_events)]

    def _neighbours(self, subject: str, k: int, source: str = "fused") -> list[Neighbor]:
        return [Neighbor(subject_id=s, score=round(score, 4)) for s, score in self.indexes[source].neighbours(subject, k)]

    # ------------------------------------------------------------------ kinds
    def task(self, subject: str | None, task_name: str | None) -> QueryResponse:
        self._needs("patients")
        subject = self._subject(subject)
        if task_name not in self.tasks:
            raise QueryError(f"unknown task {task_name!r}; known: {', '.join(sorted(self.tasks))}")
        task = self.tasks[task_name]
        path = head_path(self.loaded.folder, task.name)
        if not path.exists():
            raise QueryError(f"the model has no head for task {task.name}: fit it with "
                             f"`biomm eval {self.loaded.folder} --cohort {self.cohort} --task {task.name}`")
        head = self._head(path)
        pt, why_not = latest_prediction_time(task, self.events, subject)
        evidence = Evidence(top_events=self._events(subject, pt), similar_subjects=self._neighbours(subject, self.n_neighbours))
        if pt is None:
            return QueryResponse(kind="task", subject_id=subject, model=self.model_name, evidence=evidence, value=None,
                                 answer=f"{task.name}: no prediction, {why_not}", details={"task": task.name},
                                 warnings=[why_not])
        emb, series = self._occlusion(subject, pt)
        evidence.image_series = [series] if series else []
        missing = [m for m in task.requires if not bool(emb.present.get(m, np.zeros(1, bool))[0])]
        if missing:
            return QueryResponse(kind="task", subject_id=subject, model=self.model_name, evidence=evidence,
                                 answer=f"{task.name}: cannot be predicted, the subject has no {', '.join(missing)}",
                                 value=None, details={"task": task.name, "missing": missing},
                                 warnings=[f"no {m} for this subject" for m in missing])
        probs = head.predict(emb.features(head.source))  # row 0: everything; row i: modality i-1 left out
        p = float(probs[0])
        for i, m in enumerate(self.loaded.modalities, 1):
            present = bool(emb.present[m][0]) if m in emb.present else False
            evidence.modalities.append(ModalityAttribution(
                modality=m, present=present, attribution=round(p - float(probs[i]), 4) if present else None))
        when = day_to_iso(pt)
        return QueryResponse(
            kind="task", subject_id=subject, model=self.model_name, value=round(p, 4), evidence=evidence,
            answer=f"{task.description.strip().split('.')[0]}: probability {p:.1%} (as of {when[:10]})",
            details={"task": task.name, "prediction_time": when, "head": head.source,
                     "prediction_time_rule": f"the latest of {', '.join(task.prediction_time.anchor_codes)} "
                                             "before the outcome"})

    def _head(self, path: Path) -> LinearHead:
        key = str(path)
        if key not in self._heads:
            self._heads[key] = LinearHead.load(path)
        return self._heads[key]

    def _occlusion(self, subject: str, pt: float):
        """Embeddings of the subject at `pt` with everything, then with each modality left out: one
        forward pass of M + 1 rows, cached until the next refresh (the cohort does not change in between)."""
        key = (subject, round(pt, 6))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        mods = self.loaded.modalities
        batch = self.dm.collate([Sample(subject, pt)] * (len(mods) + 1))
        for i, m in enumerate(mods, 1):
            if m in batch.modalities:
                batch.modalities[m].present[i] = False
        emb = embed_batch(self.loaded.model, batch)
        series = (batch.extras.get("imaging_series") or [None])[0]
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (emb, series)
        return emb, series

    def similar(self, subject: str | None, k: int, modality: str | None = None) -> QueryResponse:
        subject = self._subject(subject)
        source = modality or "fused"
        if source not in self.indexes:
            raise QueryError(f"no {source} embeddings; search by one of: {', '.join(sorted(self.indexes))}")
        if subject not in self.indexes[source]._row:
            raise QueryError(f"subject {subject} has no {source} data to search by")
        neighbours = self._neighbours(subject, k, source)
        labels = self._labels_of([n.subject_id for n in neighbours])
        for n in neighbours:
            n.label = labels.get(n.subject_id)
        return QueryResponse(kind="similar", subject_id=subject, model=self.model_name, value=None,
                             answer=f"{len(neighbours)} most similar subjects by {source} embedding",
                             details={"by": source, "k": k}, evidence=Evidence(similar_subjects=neighbours))

    def _labels_of(self, subjects: list[str]) -> dict[str, str]:
        key = self.loaded.config.data.label_key
        if key and key in self.embeddings.labels:
            return self._cell_labels(subjects)
        return {}

    def _cell_labels(self, subjects: list[str]) -> dict[str, str]:
        """The cells' own labels (the trained label column), by category name."""
        from biomm.heads.annotation import label_prompts

        key, categories, _ = label_prompts(self.loaded)
        codes = self.embeddings.labels.get(key)
        row = {s: i for i, s in enumerate(self.embeddings.subject_ids)}
        out = {}
        for s in subjects:
            code = codes[row[s]] if codes is not None and s in row else float("nan")
            if not np.isnan(code) and 0 <= int(code) < len(categories):
                out[s] = categories[int(code)]
        return out

    def _virtual_cell(self):
        if self._vc is None:
            from biomm.heads.virtual_cell import VirtualCell

            self._vc = VirtualCell(self.loaded, self.cohort)
        return self._vc

    def ask(self, subject: str | None, question: str | None) -> QueryResponse:
        self._needs("patients")
        subject = self._subject(subject)
        key = ("ask", subject, " ".join((question or "").lower().split()))
        hit = self._cache.get(key)
        if hit is not None:  # same subject, same question, same cohort: the same answer
            return hit.model_copy(deep=True)
        with self._qa_lock:
            if self._qa is None:
                from biomm.heads.qa import QAService

                self._qa = QAService(self.loaded, self.cohort)  # raises QueryError when the model has no QA head
        resp = self._qa.answer(subject, question or "")
        resp.details.setdefault("question", question)
        if resp.evidence is not None and not resp.evidence.similar_subjects:
            resp.evidence.similar_subjects = self._neighbours(subject, self.n_neighbours)
        self._cache[key] = resp.model_copy(deep=True)
        return resp

    def annotate(self, cells: str | None, max_cells: int) -> QueryResponse:
        self._needs("cells")
        return self._virtual_cell().answer(QueryRequest(kind="annotate", cells=cells, max_cells=max_cells))

    def perturb(self, gene: str | None) -> QueryResponse:
        self._needs("cells")
        return self._virtual_cell().answer(QueryRequest(kind="perturb", gene=gene))


def latest_prediction_time(task: TaskDef, events, subject: str) -> tuple[float | None, str]:
    """The task's own prediction time for a query about now: the latest anchor event that has enough
    history and comes before any outcome (for onset tasks) — never the outcome itself."""
    if events is None or subject not in events:
        return None, "the subject has no events"
    s, e = events.subjects[subject]
    codes, times = events.codes_text[s:e], events.times[s:e]
    anchors = times[_match(codes, task.prediction_time.anchor_codes)]
    anchors = anchors[anchors - times[0] >= task.prediction_time.min_history_days]
    if task.label.kind == "code_within" and task.label.codes:
        outcome = times[_match(codes, task.label.codes)]
        if len(outcome):
            anchors = anchors[anchors < outcome.min()]
            if not len(anchors):
                return None, f"the outcome is already on record ({day_to_iso(float(outcome.min()))[:10]})"
    if not len(anchors):
        return None, f"no {', '.join(task.prediction_time.anchor_codes)} event with enough history to predict from"
    return float(anchors.max()), ""


def _match(codes: np.ndarray, patterns: list[str]) -> np.ndarray:
    from biomm.data.tasks import _matcher

    return _matcher(patterns)(codes)


def build_indexes(emb: Embeddings, backend: str = "auto") -> dict[str, VectorIndex]:
    """One index on the fused embedding (every subject) and one per modality (subjects that have it),
    each centered on its cohort's mean (see VectorIndex)."""
    out = {"fused": VectorIndex(emb.fused, emb.subject_ids, backend, center=True)}
    for m, vectors in emb.modalities.items():
        rows = np.flatnonzero(emb.present[m])
        if len(rows) >= 2:
            out[m] = VectorIndex(vectors[rows], [emb.subject_ids[i] for i in rows], backend, center=True)
    return out
