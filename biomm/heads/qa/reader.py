"""From a question about a patient to an answer: retrieve the patient's facts, encode them with the question for
the QA head, and turn the head's outputs into an answer rendered from the chosen fact's events.

Decoding: the question type is the intent head's argmax; the pointer then chooses among the retrieved facts of
the kinds that type is answered from, or <NONE> (not on record); for a chest X-ray finding the LM writes the
answer text. The answer and its evidence are `questions.render` of that choice."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from biomm.data.samples import Sample
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.module import Example, HeadOutput, QAHead
from biomm.heads.qa.questions import (FREE_TEXT_TYPES, QTYPES, TYPE_KINDS, Fact, QAPair, QAStore, generate_pairs,
                                      render, wording_split)
from biomm.heads.qa.retrieval import Candidate, Retriever
from biomm.model.bundle import LoadedModel, load
from biomm.objectives.autoregressive import IGNORE

Key = tuple[str, float]


def cohort_retriever(store: QAStore) -> Retriever:
    """BM25 with document frequencies over every code the cohort knows (one document each) and the X-ray."""
    docs = [Retriever.document(Fact(code, kind, store.names.get(code, code.lower()), []))
            for (code, _), kind in store.event_kinds.items()]
    docs.append(Retriever.document(Fact("DCM/CR", "imaging", "chest x-ray (CR)", [])))
    return Retriever(sorted(set(docs)))


@dataclass
class Prepared:
    """A question ready for the head: the subject's facts, the retrieved candidates and the encoded Example."""

    subject: str
    when: float
    question: str
    facts: list[Fact]
    candidates: list[Candidate]
    example: Example


@dataclass
class Prediction:
    """The head's answer to one question: type (and its probability), the chosen fact (None: not on record) and
    its probability, the rendered answer and evidence events, and the LM's text (free-text types)."""

    qtype: str
    qtype_prob: float
    fact: Fact | None
    fact_prob: float
    answer: str
    events: list[dict]
    text: str | None = None
    text_log_prob: float | None = None
    candidates: list[dict] = field(default_factory=list)


def prepare(head: QAHead, store: QAStore, retriever: Retriever, subject: str, when: float, question: str,
            facts: list[Fact] | None = None, pair: QAPair | None = None) -> Prepared:
    """Retrieve and encode one question; with `pair`, the training targets too (pointer IGNORE when the fact
    holding the answer was not retrieved)."""
    facts = store.facts(subject, when) if facts is None else facts
    cands = retriever.retrieve(question, facts, head.cfg.retrieval.top_k)
    intent = pointer = IGNORE
    answer = None
    if pair is not None:
        intent = QTYPES.index(pair.qtype)
        if pair.gold_code is None:
            pointer = len(cands)
        else:
            kinds = TYPE_KINDS[pair.qtype]
            hits = [i for i, c in enumerate(cands) if c.fact.code == pair.gold_code and c.fact.kind in kinds]
            pointer = hits[0] if hits else IGNORE
        if pair.qtype in FREE_TEXT_TYPES and pair.gold_code is not None:
            answer = pair.answer
    ex = head.encode((subject, when), question, [c.text() for c in cands], [c.features for c in cands],
                     intent, pointer, answer)
    return Prepared(subject, when, question, facts, cands, ex)


def decide(head: QAHead, store: QAStore, prep: Prepared, out: HeadOutput, row: int,
           fused: torch.Tensor, mask: torch.Tensor) -> Prediction:
    """The answer of one example from the head's outputs (row `row` of a batch; fused [1, T, D] for free text)."""
    probs = torch.softmax(out.intent[row], -1)
    qi = int(probs.argmax())
    qtype = QTYPES[qi]
    kinds = TYPE_KINDS[qtype]
    scores = out.pointer[row, :len(prep.candidates) + 1].clone()
    for i, c in enumerate(prep.candidates):
        if c.fact.kind not in kinds:
            scores[i] = float("-inf")
    p = torch.softmax(scores, -1)
    choice = int(p.argmax())
    fact = prep.candidates[choice].fact if choice < len(prep.candidates) else None
    text = logp = None
    if qtype in FREE_TEXT_TYPES and fact is not None:
        text, logp = head.generate(fused, mask, prep.example)
    answer, events = render(store, qtype, fact, prep.facts, prep.when, free_text=text)
    unconstrained = torch.softmax(out.pointer[row, :len(prep.candidates) + 1], -1).tolist()
    cands = [{"code": c.fact.code, "description": store.describe(c.fact.code) or c.fact.name, "kind": c.fact.kind,
              "bm25": round(c.score, 3), "p": round(unconstrained[i], 4)} for i, c in enumerate(prep.candidates)]
    return Prediction(qtype, float(probs[qi]), fact, float(p[choice]), answer, events, text, logp, cands)


@torch.no_grad()
def predict_batch(head: QAHead, store: QAStore, preps: list[Prepared], fused: torch.Tensor, mask: torch.Tensor
                  ) -> list[Prediction]:
    """Predictions for prepared questions with their fused tokens [B, T, D] and mask [B, T]."""
    head.eval()
    out = head(fused, mask, [p.example for p in preps])
    return [decide(head, store, p, out, i, fused[i:i + 1], mask[i:i + 1]) for i, p in enumerate(preps)]


def loaded_model(model: str | Path | LoadedModel) -> LoadedModel:
    """`model` itself when already loaded, else the model folder opened."""
    return model if isinstance(model, LoadedModel) else load(model)


def open_store(cohort: str | Path, cfg: QAConfig, kinds: dict[str, str] | None = None) -> QAStore:
    """The cohort's QA facts under a QA config (`kinds`: a trained head's code kinds)."""
    q = cfg.questions
    return QAStore(cohort, q.kind_sources, q.xray_labels, kinds)


def split_subjects(store: QAStore, split: str) -> list[str]:
    """The subjects of one split that have a record to ask about."""
    return sorted(s for s, sp in store.split_of.items() if sp == split and store.reference_time(s) is not None)


def training_pairs(store: QAStore, cfg: QAConfig) -> list[QAPair]:
    """Every training patient's questions, each in every training wording."""
    train_w, _ = wording_split(cfg.questions.held_out_wordings)
    return generate_pairs(store, split_subjects(store, "train"), train_w, cfg.questions.seed, all_wordings=True)


@torch.no_grad()
def fused_tokens(loaded, dm, keys: list[Key], batch_size: int = 32) -> dict[Key, tuple[torch.Tensor, torch.Tensor]]:
    """Each (subject, time)'s fused tokens [T, D] and mask [T] from the frozen clinical model."""
    out = {}
    loaded.model.eval()
    for i in range(0, len(keys), batch_size):
        chunk = keys[i:i + batch_size]
        res = loaded.model(dm.collate([Sample(s, t) for s, t in chunk]))
        for k, x, m in zip(chunk, res.fused_tokens.float(), res.fused_mask):
            out[k] = (x, m)
    return out


def stack(cache, keys: list[Key]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused tokens [B, T, D] and mask [B, T] of cached keys."""
    return torch.stack([cache[k][0] for k in keys]), torch.stack([cache[k][1] for k in keys])


def prepare_pairs(head: QAHead, store: QAStore, retriever, pairs: list[QAPair], targets: bool = True) -> list[Prepared]:
    """Retrieve and encode every pair (each subject's facts built once)."""
    facts: dict[str, list] = {}
    out = []
    for p in pairs:
        if p.subject_id not in facts:
            facts[p.subject_id] = store.facts(p.subject_id, p.time)
        out.append(prepare(head, store, retriever, p.subject_id, p.time, p.question, facts[p.subject_id],
                           p if targets else None))
    return out
