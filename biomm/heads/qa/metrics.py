"""Exact match and token F1 (SQuAD-style, on lower-cased word and punctuation tokens), per question type,
for a model's answers and for the majority-answer baseline of the training split."""
from __future__ import annotations

import re
from collections import Counter


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
