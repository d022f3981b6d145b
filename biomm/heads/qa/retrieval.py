"""Retrieval of the patient's facts most relevant to a question: BM25 over each fact's name (its code
description) plus the words of its kind, with the question as the query.

BM25 is written here rather than taken from `rank_bm25` because its document frequencies must come from
the cohort's code dictionary (one document per code the cohort knows), not from the one patient's few
facts that are scored: a word common to every patient's record (e.g. "blood") should weigh little even
when it is rare in one record. The demographics (birth, sex) are always given to the model, as a header.

Each candidate also carries lexical features the model's pointer uses beside the LM's states: the BM25
score relative to the best, how much of the fact's name the question covers, whether the whole name
appears in the question (and how long it is), the header flag and the rank."""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from biomm.heads.qa.questions import KIND_WORDS, Fact

STOP = frozenset("a an and are as at be by did does for from has have how in is it of on or the to was were what "
                 "when which with".split())
N_FEATURES = 6
HEADER_KINDS = ("birth", "sex")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words without stop words."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP]


@dataclass
class Candidate:
    """A retrieved fact with its BM25 score and pointer features [N_FEATURES]."""

    fact: Fact
    score: float
    features: list[float]

    def text(self) -> str:
        """What the LM reads of the candidate: its kind and name."""
        return f"{self.fact.kind} : {self.fact.name}"


class Retriever:
    """BM25 (k1, b) with document frequencies over `documents` (the cohort's fact names and kind words)."""

    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.n = max(len(documents), 1)
        self.df = Counter(w for d in documents for w in set(words(d)))
        self.avg_len = sum(len(words(d)) for d in documents) / self.n if documents else 1.0
        self._doc_words: dict[tuple[str, str], list[str]] = {}  # (kind, name) -> document words, computed once
        self._idf: dict[str, float] = {}

    @staticmethod
    def document(fact: Fact) -> str:
        """The text a fact is found by: its name and the words of its kind."""
        return f"{fact.name} {KIND_WORDS.get(fact.kind, '')}"

    def idf(self, word: str) -> float:
        """BM25's idf (the +1 form, never negative)."""
        if word not in self._idf:
            df = self.df.get(word, 0)
            self._idf[word] = math.log(1.0 + (self.n - df + 0.5) / (df + 0.5))
        return self._idf[word]

    def _words_of(self, fact: Fact) -> list[str]:
        key = (fact.kind, fact.name)
        if key not in self._doc_words:
            self._doc_words[key] = words(self.document(fact))
        return self._doc_words[key]

    def score(self, query: list[str], doc: list[str]) -> float:
        """BM25 of one document for the query words."""
        hits = [w for w in set(query) if w in doc]
        if not hits:
            return 0.0
        tf = Counter(doc)
        norm = self.k1 * (1 - self.b + self.b * len(doc) / max(self.avg_len, 1e-6))
        return sum(self.idf(w) * tf[w] * (self.k1 + 1) / (tf[w] + norm) for w in hits)

    def retrieve(self, question: str, facts: list[Fact], k: int) -> list[Candidate]:
        """The header facts (birth, sex), then the `k` facts with the highest positive BM25 score, best first."""
        q = words(question)
        q_text = " ".join(re.findall(r"[a-z0-9]+", question.lower()))
        header = [f for f in facts if f.kind in HEADER_KINDS]
        scored = [(self.score(q, self._words_of(f)), f) for f in facts if f.kind not in HEADER_KINDS]
        scored = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1].code))[:k]
        best = scored[0][0] if scored else 1.0
        out = [Candidate(f, 0.0, self._features(q, q_text, f, 0.0, best, None)) for f in header]
        out += [Candidate(f, s, self._features(q, q_text, f, s, best, rank)) for rank, (s, f) in enumerate(scored)]
        return out

    @staticmethod
    def _features(q: list[str], q_text: str, fact: Fact, score: float, best: float, rank: int | None) -> list[float]:
        name = words(fact.name)
        name_text = " ".join(re.findall(r"[a-z0-9]+", fact.name.lower()))
        cover = len(set(name) & set(q)) / len(set(name)) if name else 0.0
        whole = float(bool(name_text) and f" {name_text} " in f" {q_text} ")
        return [score / best if best > 0 else 0.0, cover, whole, whole * len(name) / max(len(q), 1),
                float(rank is None), 0.0 if rank is None else 1.0 / (rank + 1)]
