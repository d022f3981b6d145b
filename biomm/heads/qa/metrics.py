"""Exact match and token F1 (SQuAD-style, on lower-cased word and punctuation tokens) per question type, evidence
precision, "not recorded" detection F1, and 95% intervals by a bootstrap over patients."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from biomm.heads.qa.questions import NOT_RECORDED


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: '128 mm[Hg]' -> ['128', 'mm', '[', 'hg', ']']."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the answers have the same words (case and spacing aside), else 0.0."""
    return float(words(pred) == words(gold))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style F1 over the words of the two answers."""
    p, g = words(pred), words(gold)
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def majority_answers(qtypes: list[str], answers: list[str]) -> dict[str, str]:
    """Most frequent answer per question type (ties: alphabetical), the honest no-model baseline."""
    counts: dict[str, Counter] = {}
    for q, a in zip(qtypes, answers):
        counts.setdefault(q, Counter())[a] += 1
    return {q: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for q, c in counts.items()}


def score(qtypes: list[str], preds: list[str], golds: list[str]) -> dict[str, dict[str, float]]:
    """{'overall' | qtype: {'em', 'f1', 'n'}}."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for q, p, g in zip(qtypes, preds, golds):
        pair = (exact_match(p, g), token_f1(p, g))
        groups.setdefault(q, []).append(pair)
        groups.setdefault("overall", []).append(pair)
    return {q: {"em": sum(e for e, _ in v) / len(v), "f1": sum(f for _, f in v) / len(v), "n": len(v)}
            for q, v in sorted(groups.items())}


def _event_keys(events: list[dict]) -> frozenset[tuple[str, str]]:
    return frozenset((e["code"], e["time"]) for e in events)


def evidence_hits(cited: list[list[dict]], gold: list[list[dict]]) -> list[float | None]:
    """Per answer: 1.0 when it cites exactly the events that hold the answer, 0.0 when it cites others (or cites
    events where nothing on record holds the answer), None when it cites nothing."""
    return [None if not c else float(_event_keys(c) == _event_keys(g)) for c, g in zip(cited, gold)]


def evidence_precision(cited: list[list[dict]], gold: list[list[dict]]) -> dict[str, float]:
    """{'precision', 'n'}: the share of answers citing events whose cited events are the ones holding the answer."""
    hits = [h for h in evidence_hits(cited, gold) if h is not None]
    return {"precision": float(np.mean(hits)) if hits else 0.0, "n": len(hits)}


def not_recorded_f1(preds: list[str], golds: list[str]) -> dict[str, float]:
    """Detection of "not recorded" answers: precision, recall, F1 and the number of gold positives."""
    p = np.array([exact_match(x, NOT_RECORDED) for x in preds], bool)
    g = np.array([exact_match(x, NOT_RECORDED) for x in golds], bool)
    tp = float((p & g).sum())
    precision = tp / p.sum() if p.sum() else 0.0
    recall = tp / g.sum() if g.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n": int(g.sum())}


def bootstrap_ci(values: list[float], groups: list[str], n: int = 1000, seed: int = 0) -> list[float]:
    """95% interval of the mean of `values` by resampling whole groups (patients) with replacement."""
    vals = np.asarray(values, float)
    if not len(vals):
        return [float("nan"), float("nan")]
    keys = sorted(set(groups))
    index = {k: np.flatnonzero(np.asarray(groups) == k) for k in keys}
    sums = np.array([vals[index[k]].sum() for k in keys])
    counts = np.array([len(index[k]) for k in keys])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(n, len(keys)))
    means = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]
