"""Question answering about one patient (kind "ask"): the clinical model's fused tokens prefix a causal LM
(LLaVA), and the answer comes with its evidence — the records behind it, the image series the model saw,
and each modality's occlusion attribution (the change in the answer's log-probability without it).

    from biomm.heads.qa.service import QAService
    qa = QAService(biomm.load(model_dir), cohort_dir)      # loads <model>/heads/qa/ once
    response = qa.answer(subject_id, "Has the patient been diagnosed with hypertension?")
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from biomm.data.ehr import day_to_iso
from biomm.data.samples import Sample
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.metrics import exact_match
from biomm.heads.qa.module import QAHead, load_qa_head
from biomm.heads.qa.questions import NO_XRAY, QAStore, classify, reference_answer
from biomm.heads.qa.train import evaluate_qa, loaded_model, open_store, train_qa
from biomm.schema import Evidence, EventEvidence, ModalityAttribution, QueryError, QueryResponse
from biomm.train.precision import autocast
from biomm.types import Batch, ModalityInput

__all__ = ["QAConfig", "QAHead", "QAService", "answer", "evaluate_qa", "load_qa_head", "train_qa"]
NO_EHR = "no health records on record for this patient"
QUESTION_MODALITY = {"chest_xray": "imaging", "systolic_bp": "ehr", "diagnosis": "ehr"}


def _without(batch: Batch, modality: str) -> Batch:
    mods = dict(batch.modalities)
    mods[modality] = ModalityInput(mods[modality].tensors, torch.zeros_like(mods[modality].present))
    return Batch(mods, batch.subject_ids, batch.labels, batch.extras)


class QAService:
    """A loaded model's QA head over one cohort (the store and data module are read once)."""

    def __init__(self, model, cohort: str | Path):
        self.loaded = loaded_model(model)
        self.head = load_qa_head(self.loaded)
        self.cohort = Path(cohort)
        self.store: QAStore = open_store(self.cohort, self.head.cfg, self.head.conditions)
        self.dm = self.loaded.datamodule(self.cohort)
        self.name = f"{self.loaded.manifest.get('name', self.loaded.folder.name)}/qa"

    def _log_prob(self, batch: Batch, prompt: list[int], answer_ids: list[int]) -> float:
        out = self.loaded.model(batch)
        with autocast(self.head.cfg.train.precision):
            return float(self.head.log_prob(out.fused_tokens.float(), out.fused_mask, [prompt], [answer_ids])[0])

    @torch.no_grad()
    def answer(self, subject_id: str, question: str) -> QueryResponse:
        """The head's answer to one question about one patient as of its last record, with the evidence."""
        if subject_id not in self.store.subjects:
            raise QueryError(f"unknown subject '{subject_id}': not in cohort {self.cohort}")
        if not question or not question.strip():
            raise QueryError("an 'ask' query needs a question")
        when = self.store.last_time(subject_id) if subject_id in self.store.events else None
        qtype, code = classify(question, self.store)
        ref, ref_events, ref_series = reference_answer(self.store, subject_id, when, qtype, code) if when is not None \
            else (None, [], [])
        self.loaded.model.eval()
        self.head.eval()
        batch = self.dm.collate([Sample(subject_id, when)])
        present = {m: bool(batch.present(m)[0]) for m in self.loaded.model.adapters}
        warnings: list[str] = []
        needs = QUESTION_MODALITY.get(qtype or "")
        if needs and needs not in self.loaded.model.adapters:
            warnings.append(f"the model has no {needs} encoder; the answer cannot use that modality")
        missing = needs if needs in present and not present[needs] else None
        if qtype == "chest_xray" and ref == NO_XRAY:
            missing = "imaging"
        series = [s for s in batch.extras.get("imaging_series", [None]) if s]
        if missing:  # the records say the modality is absent: say so, never generate an answer about it
            text, source, logp, attributions = (NO_XRAY if missing == "imaging" else NO_EHR), "store", None, {}
        else:
            prompt = self.head.prompt_ids(question.strip())
            out = self.loaded.model(batch)
            with autocast(self.head.cfg.train.precision):
                text = self.head.generate(out.fused_tokens.float(), out.fused_mask, [prompt],
                                          self.head.cfg.train.max_answer_tokens)[0]
            ids = self.head.answer_ids(text)
            logp = self._log_prob(batch, prompt, ids)
            attributions = {m: logp - self._log_prob(_without(batch, m), prompt, ids)
                            for m, here in present.items() if here and sum(present.values()) > 1}
            source = "model"
        evidence = Evidence(
            modalities=[ModalityAttribution(modality=m, present=here, attribution=attributions.get(m))
                        for m, here in present.items()],
            top_events=self._events(subject_id, when, ref_events),
            image_series=sorted(set(series) | set(ref_series)))
        if qtype == "diagnosis" and code is None:
            warnings.append("the condition asked about is not among the cohort's diagnosis codes: "
                            "no reference answer from the records")
        if qtype is None:
            warnings.append("the question matches none of the trained question types (diagnosis, systolic blood "
                            "pressure, chest X-ray): the answer is unreliable")
        if ref is not None and source == "model" and not exact_match(text, ref):
            warnings.append("the model's answer differs from the records (see details.reference_answer)")
        number = re.match(r"^\s*(-?\d+(?:\.\d+)?)\b", text)
        return QueryResponse(
            kind="ask", subject_id=subject_id, answer=text, value=float(number.group(1)) if number else text,
            details={"question_type": qtype, "reference_time": day_to_iso(when) if when is not None else None,
                     "reference_answer": ref, "source": source, "log_prob": logp},
            evidence=evidence, model=self.name, warnings=warnings)

    def _events(self, subject: str, when: float | None, first: list[dict], k: int = 5) -> list[EventEvidence]:
        """The events behind the answer, then the subject's most recent events (with readable names)."""
        out = [EventEvidence(**e) for e in first]
        if when is None or subject not in self.store.events:
            return out
        times, codes, values, _ = self.store.events[subject]
        seen = {(e.code, e.time) for e in out}
        for i in range(int((times <= when).sum()) - 1, -1, -1):
            if len(out) >= len(first) + k:
                break
            ev = EventEvidence(code=str(codes[i]), time=day_to_iso(float(times[i])) if np.isfinite(times[i]) else "",
                               value=float(values[i]) if np.isfinite(values[i]) else None,
                               description=self.store.describe(str(codes[i])))
            if (ev.code, ev.time) not in seen:
                seen.add((ev.code, ev.time))
                out.append(ev)
        return out


def answer(model, cohort: str | Path, subject_id: str, question: str) -> QueryResponse:
    """Answer one question about one subject (kind "ask"), opening the head for this one answer; to ask
    many, keep a QAService (the query engine keeps one per cohort)."""
    return QAService(model, cohort).answer(subject_id, question)
