"""`biomm qa eval`: the QA head on held-out patients (training wordings) and on held-out wordings (the same
patients and questions, in wordings never trained on), against two baselines on the same questions:

- majority: the training split's most frequent answer per question type;
- retrieval: the top BM25 fact of the kinds the question type is answered from, rendered in the question's
  own (true) type — it is given the question type, which the model must infer; a chest X-ray finding is
  answered with the training majority finding.

Reported per set: exact match and token F1 per type, evidence precision (the cited events are the ones that
hold the answer), "not recorded" detection F1, retrieval recall of the fact holding the answer, 95% intervals
by a bootstrap over patients, and the time to answer one question through QAService on 2 threads."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from biomm.config import ConfigError
from biomm.heads.qa.metrics import (bootstrap_ci, evidence_hits, evidence_precision, exact_match, majority_answers,
                                    not_recorded_f1, score)
from biomm.heads.qa.module import QAHead, load_qa_head
from biomm.heads.qa.questions import TYPE_KINDS, VALUE_TYPES, QAPair, QAStore, generate_pairs, render, wording_split
from biomm.heads.qa.reader import (Prediction, cohort_retriever, fused_tokens, loaded_model, open_store,
                                   predict_batch, prepare_pairs, split_subjects, stack, training_pairs)
from biomm.heads.qa.retrieval import Retriever

LATENCY_QUESTIONS = 20


def predict_pairs(head: QAHead, store: QAStore, retriever: Retriever, cache, pairs: list[QAPair],
                  batch_size: int = 64) -> tuple[list[Prediction], list[bool]]:
    """The head's predictions for `pairs`, and whether the fact holding each answer was retrieved."""
    preps = prepare_pairs(head, store, retriever, pairs)
    out: list[Prediction] = []
    for i in range(0, len(preps), batch_size):
        chunk = preps[i:i + batch_size]
        fused, mask = stack(cache, [p.example.key for p in chunk])
        out += predict_batch(head, store, chunk, fused, mask)
    return out, [p.example.pointer != -100 for p in preps]


def retrieval_baseline(store: QAStore, retriever: Retriever, pairs: list[QAPair], finding: str
                       ) -> list[tuple[str, list[dict]]]:
    """(answer, events) of the top retrieved fact of the question type's kinds, in the true question type."""
    out, facts = [], {}
    for p in pairs:
        if p.subject_id not in facts:
            facts[p.subject_id] = store.facts(p.subject_id, p.time)
        mine = [f for f in facts[p.subject_id] if f.kind in TYPE_KINDS[p.qtype]]
        cands = retriever.retrieve(p.question, mine, 1)
        header = [c for c in cands if c.score == 0.0 and c.features[4] == 1.0]
        ranked = [c for c in cands if c not in header] or header
        top = ranked[0].fact if ranked else None
        out.append(render(store, p.qtype, top, facts[p.subject_id], p.time, free_text=finding if top else None))
    return out


def _set_report(pairs: list[QAPair], preds: list[Prediction], retrieved: list[bool], majority: dict[str, str],
                baseline: list[tuple[str, list[dict]]]) -> dict:
    qtypes, golds = [p.qtype for p in pairs], [p.answer for p in pairs]
    subjects = [p.subject_id for p in pairs]
    model_ans = [x.answer for x in preds]
    maj_ans = [majority.get(q, "") for q in qtypes]
    base_ans = [a for a, _ in baseline]
    gold_ev = [p.events for p in pairs]
    per_type_ev = {}
    hits = evidence_hits([x.events for x in preds], gold_ev)
    for q in sorted(set(qtypes)):
        h = [v for v, t in zip(hits, qtypes) if t == q and v is not None]
        per_type_ev[q] = {"precision": float(np.mean(h)) if h else None, "n": len(h)}
    em = {name: [exact_match(a, g) for a, g in zip(ans, golds)]
          for name, ans in (("model", model_ans), ("majority", maj_ans), ("retrieval", base_ans))}
    value_rows = [i for i, q in enumerate(qtypes) if q in VALUE_TYPES]
    intents = [x.qtype == p.qtype for x, p in zip(preds, pairs)]
    return {
        "n": len(pairs), "subjects": len(set(subjects)),
        "model": score(qtypes, model_ans, golds), "majority": score(qtypes, maj_ans, golds),
        "retrieval": score(qtypes, base_ans, golds),
        "evidence_precision": {**evidence_precision([x.events for x in preds], gold_ev), "per_type": per_type_ev},
        "retrieval_evidence_precision": evidence_precision([e for _, e in baseline], gold_ev),
        "not_recorded": {"model": not_recorded_f1(model_ans, golds), "majority": not_recorded_f1(maj_ans, golds),
                         "retrieval": not_recorded_f1(base_ans, golds)},
        "question_type_accuracy": float(np.mean(intents)),
        "retrieval_recall": float(np.mean(retrieved)),
        "ci95": {
            **{f"{name}_em": bootstrap_ci(v, subjects) for name, v in em.items()},
            "model_value_em": bootstrap_ci([em["model"][i] for i in value_rows], [subjects[i] for i in value_rows]),
            "model_evidence_precision": bootstrap_ci([h for h in hits if h is not None],
                                                     [s for s, h in zip(subjects, hits) if h is not None]),
        },
    }


def latency(loaded, head: QAHead, cohort: str | Path, pairs: list[QAPair], threads: int = 2) -> dict:
    """Milliseconds to answer one question about one patient through QAService (model and head loaded), on
    `threads` threads: median and 95th percentile over up to LATENCY_QUESTIONS questions of distinct patients."""
    from biomm.heads.qa.service import QAService

    service = QAService(loaded, cohort, head=head)
    chosen, seen = [], set()
    for p in pairs:
        if p.subject_id not in seen:
            seen.add(p.subject_id)
            chosen.append(p)
    chosen = chosen[:LATENCY_QUESTIONS]
    if not chosen:
        return {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        service.answer(chosen[0].subject_id, chosen[0].question)  # warm-up
        times = []
        for p in chosen:
            start = time.perf_counter()
            service.answer(p.subject_id, p.question)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "n": len(times), "median_ms": round(float(np.median(times)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1)}


def evaluate_head(loaded, head: QAHead, store: QAStore, cohort: str | Path, split: str = "test", cache=None, dm=None,
                  measure_latency: bool = True) -> dict:
    """The report on one split's patients: {'held_out_patients', 'held_out_wordings', 'baseline_answers', 'latency'}."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split '{split}' (train, val, test)")
    cfg = head.cfg
    subjects = split_subjects(store, split)
    if not subjects:
        raise ConfigError(f"no {split} subject with a record to ask about in {cohort}")
    train_w, held_w = wording_split(cfg.questions.held_out_wordings)
    sets = {"held_out_patients": generate_pairs(store, subjects, train_w, cfg.questions.seed),
            "held_out_wordings": generate_pairs(store, subjects, held_w, cfg.questions.seed)}
    train_pairs = training_pairs(store, cfg)
    majority = majority_answers([p.qtype for p in train_pairs], [p.answer for p in train_pairs])
    finding = majority_answers(["f"] * 2 + ["f" for p in train_pairs if p.qtype == "imaging_finding" and p.gold_code],
                               ["no", "yes"] + [p.answer for p in train_pairs
                                                if p.qtype == "imaging_finding" and p.gold_code])["f"]
    if cache is None:
        dm = dm or loaded.datamodule(cohort)
        cache = fused_tokens(loaded, dm, sorted({(s, store.reference_time(s)) for s in subjects}))
    retriever = cohort_retriever(store)
    report: dict = {"split": split, "baseline_answers": majority}
    for name, pairs in sets.items():
        preds, retrieved = predict_pairs(head, store, retriever, cache, pairs)
        report[name] = _set_report(pairs, preds, retrieved, majority,
                                   retrieval_baseline(store, retriever, pairs, finding))
    if measure_latency:
        report["latency"] = latency(loaded, head, cohort, sets["held_out_patients"])
    return report


def evaluate_qa(model, cohort: str | Path, split: str = "test", xray_labels: str | None = None,
                measure_latency: bool = True) -> dict:
    """Evaluate a saved QA head on one split of a cohort (questions regenerated with the head's config)."""
    loaded = loaded_model(model)
    head = load_qa_head(loaded)
    cfg = head.cfg
    if xray_labels:
        cfg = cfg.model_copy(update={"questions": cfg.questions.model_copy(update={"xray_labels": xray_labels})})
        head.cfg = cfg
    store = open_store(cohort, cfg, head.kinds)
    return evaluate_head(loaded, head, store, cohort, split, measure_latency=measure_latency)
