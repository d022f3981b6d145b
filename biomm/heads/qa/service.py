"""Question answering about one patient (kind "ask"), grounded in the record: the patient's facts most relevant
to the question are retrieved (BM25), read by the QA head's causal LM beside the projected fused latents
(LLaVA), and the answer is rendered from the event the head points to — values, units and dates copied from
it — which the response cites as its evidence. Each modality's occlusion attribution is the change in the
log-probability of the head's decision (question type and evidence) without it.

    from biomm.heads.qa.service import QAService
    qa = QAService(biomm.load(model_dir), cohort_dir)      # loads <model>/heads/qa/ once
    response = qa.answer(subject_id, "What was the most recent systolic blood pressure?")

`details` (stable keys): question_type, question_type_confidence, reference_time, source ("record": copied
from the cited event; "model": the LM's text, for a chest X-ray finding; "none": nothing to ask about),
evidence_confidence, recorded (the cited event: code, time, value, unit, text, description; None when not on
record), reference_answer (the X-ray's recorded label for a finding; else the answer the cited event gives,
i.e. the answer itself), cited (how many of evidence.top_events are cited; the rest are other retrieved
facts), candidates (retrieved facts with BM25 score and pointer probability), log_prob."""
from __future__ import annotations

from pathlib import Path

import torch

from biomm.data.ehr import day_to_iso
from biomm.data.samples import Sample
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.module import QAHead, load_qa_head
from biomm.heads.qa.questions import NOT_RECORDED, QAStore, render
from biomm.heads.qa.reader import cohort_retriever, decide, loaded_model, open_store, prepare
from biomm.schema import EventEvidence, Evidence, ModalityAttribution, QueryError, QueryRequest, QueryResponse

__all__ = ["QAConfig", "QAHead", "QAService", "answer", "load_qa_head", "max_question_length"]
TYPE_MODALITY = {"imaging_finding": "imaging"}
OTHER_EVENTS = 5


def max_question_length() -> int:
    """The longest question accepted: the query contract's limit on `question`."""
    for meta in QueryRequest.model_fields["question"].metadata:
        if getattr(meta, "max_length", None):
            return int(meta.max_length)
    return 1000


class QAService:
    """A loaded model's QA head over one cohort (the store, retriever and data module are read once)."""

    def __init__(self, model, cohort: str | Path, head: QAHead | None = None):
        self.loaded = loaded_model(model)
        self.head = head if head is not None else load_qa_head(self.loaded)
        self.cohort = Path(cohort)
        self.store: QAStore = open_store(self.cohort, self.head.cfg, self.head.kinds)
        self.retriever = cohort_retriever(self.store)
        self.dm = self.loaded.datamodule(self.cohort)
        self.name = f"{self.loaded.manifest.get('name', self.loaded.folder.name)}/qa"

    def _check(self, subject_id: str, question: str) -> str:
        if subject_id not in self.store.subjects:
            raise QueryError(f"unknown subject '{subject_id}': not in cohort {self.cohort}")
        q = (question or "").strip()
        if not q:
            raise QueryError("an 'ask' query needs a question (it is empty)")
        if len(q) > max_question_length():
            raise QueryError(f"the question is {len(q)} characters long; at most {max_question_length()} are accepted")
        return " ".join(q.split())

    @torch.no_grad()
    def answer(self, subject_id: str, question: str) -> QueryResponse:
        """The head's answer to one question about one patient as of its last record, with the evidence."""
        question = self._check(subject_id, question)
        when = self.store.reference_time(subject_id)
        if when is None:
            return QueryResponse(
                kind="ask", subject_id=subject_id, answer=NOT_RECORDED, value=NOT_RECORDED, model=self.name,
                details=self._details(None, None, None, "none", question), evidence=Evidence(),
                warnings=["the subject has no dated record (no events, no chest X-ray) to answer from"])
        self.loaded.model.eval()
        self.head.eval()
        mods = [m for m in self.loaded.modalities if m in self.loaded.model.adapters]
        batch = self.dm.collate([Sample(subject_id, when)] * (len(mods) + 1))
        present = {m: bool(batch.modalities[m].present[0]) if m in batch.modalities else False for m in mods}
        for i, m in enumerate(mods, 1):
            if m in batch.modalities:
                batch.modalities[m].present[i] = False
        out = self.loaded.model(batch)
        fused, mask = out.fused_tokens.float(), out.fused_mask
        prep = prepare(self.head, self.store, self.retriever, subject_id, when, question)
        head_out = self.head(fused, mask, [prep.example] * (len(mods) + 1))
        pred = decide(self.head, self.store, prep, head_out, 0, fused[:1], mask[:1])
        attributions = self._attributions(head_out, pred, prep, mods, present)
        warnings = self._warnings(pred, prep, present)
        series = [s for s in (batch.extras.get("imaging_series") or [])[:1] if s]
        if pred.fact is not None and pred.fact.kind == "imaging":
            series = sorted(set(series) | {pred.fact.last.text})
        cited = [EventEvidence(**e) for e in pred.events]
        seen = {(e.code, e.time) for e in cited}
        others = []
        for c in prep.candidates:
            ev = EventEvidence(**c.fact.last.evidence(self.store.describe(c.fact.code)))
            if (ev.code, ev.time) not in seen and c.fact.kind != "imaging" and len(others) < OTHER_EVENTS:
                seen.add((ev.code, ev.time))
                others.append(ev)
        source = "model" if pred.text is not None else "record"
        evidence = Evidence(
            modalities=[ModalityAttribution(modality=m, present=here, attribution=attributions.get(m))
                        for m, here in present.items()],
            top_events=cited + others, image_series=series)
        return QueryResponse(
            kind="ask", subject_id=subject_id, answer=pred.answer, value=self._value(pred), model=self.name,
            details=self._details(pred, when, prep, source, question, cited=len(cited)), evidence=evidence,
            warnings=warnings)

    def _attributions(self, out, pred, prep, mods: list[str], present: dict[str, bool]) -> dict[str, float]:
        """Per present modality: log p(decision) with it minus without it (decision: question type and evidence)."""
        if sum(present.values()) < 2:
            return {}
        from biomm.heads.qa.questions import QTYPES

        qi = QTYPES.index(pred.qtype)
        choice = len(prep.candidates) if pred.fact is None else next(
            i for i, c in enumerate(prep.candidates) if c.fact is pred.fact)
        n = len(prep.candidates) + 1
        logp = torch.log_softmax(out.intent, -1)[:, qi] + torch.log_softmax(out.pointer[:, :n], -1)[:, choice]
        return {m: round(float(logp[0] - logp[i]), 4) for i, m in enumerate(mods, 1) if present[m]}

    def _warnings(self, pred, prep, present: dict[str, bool]) -> list[str]:
        out = []
        if pred.qtype_prob < 0.5:
            out.append(f"the question type is uncertain (read as {pred.qtype}, p={pred.qtype_prob:.2f}): rephrase "
                       "the question if the answer does not fit it")
        needs = TYPE_MODALITY.get(pred.qtype)
        if needs and needs not in present:
            out.append(f"the model has no {needs} encoder; the answer cannot use that modality")
        elif needs and not any(c.fact.kind == "imaging" for c in prep.candidates):
            out.append("the subject has no chest X-ray on record: nothing to read a finding from")
        if pred.fact is None and pred.answer == NOT_RECORDED:
            out.append("the record holds no entry that answers this question")
        if not any(c.score > 0 for c in prep.candidates) and pred.qtype not in ("age", "sex", "encounter_count"):
            out.append("no entry of the record matches the words of the question")
        return out

    def _details(self, pred, when, prep, source: str, question: str, cited: int = 0) -> dict:
        recorded = reference = None
        if pred is not None and pred.fact is not None:
            e = pred.fact.last if pred.qtype not in ("diagnosis", "diagnosis_date", "allergy", "age", "sex") \
                else pred.fact.first
            recorded = {**e.evidence(self.store.describe(pred.fact.code)), "text": e.text}
            if pred.fact.kind == "imaging":
                recorded["value"] = pred.fact.label
                reference = None if pred.fact.label is None else ("yes" if pred.fact.label else "no")
            else:
                reference = pred.answer
        elif pred is not None:
            reference = render(self.store, pred.qtype, None, prep.facts, when)[0]
        return {"question": question, "question_type": pred.qtype if pred else None,
                "question_type_confidence": round(pred.qtype_prob, 4) if pred else None,
                "reference_time": day_to_iso(when) if when is not None else None, "source": source,
                "evidence_confidence": round(pred.fact_prob, 4) if pred else None, "recorded": recorded,
                "reference_answer": reference, "cited": cited, "candidates": pred.candidates if pred else [],
                "log_prob": pred.text_log_prob if pred else None}

    @staticmethod
    def _value(pred) -> float | str:
        if pred.qtype == "latest_value" and pred.events and pred.events[0].get("value") is not None:
            return float(pred.events[0]["value"])
        if pred.qtype in ("age", "encounter_count") and pred.answer.split()[0].isdigit():
            return float(pred.answer.split()[0])
        return pred.answer


def answer(model, cohort: str | Path, subject_id: str, question: str) -> QueryResponse:
    """Answer one question about one subject (kind "ask"), opening the head for this one answer; to ask
    many, keep a QAService (the query engine keeps one per cohort)."""
    return QAService(model, cohort).answer(subject_id, question)
