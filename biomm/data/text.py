"""Text for the model: the cohort's notes per subject, tokenized with the run's WordPiece tokenizer
(`biomm.vocab.text`: built from the training notes and saved with the run, or a user's pretrained one
from a local directory)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from biomm.data.ehr import days_since_epoch
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext
from biomm.store.events import read_notes
from biomm.types import ModalityInput
from biomm.vocab.text import build_text_tokenizer, load_text_tokenizer


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask `[B, L]` (padded to the longest, truncated at `max_length`)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class SubjectNotes:
    """Each subject's notes in time order; a subject's text is its most recent notes before a time."""

    def __init__(self, cohort_root: str | Path, subjects: list[str] | None = None):
        self.notes: dict[str, tuple[np.ndarray, list[str]]] = {}
        grouped: dict[str, list[tuple]] = {}
        for sid, t, text in read_notes(cohort_root, subjects):
            grouped.setdefault(sid, []).append((t, text))
        for sid, items in grouped.items():
            times = days_since_epoch(np.array([np.datetime64(t, "us") if t else np.datetime64("NaT") for t, _ in items]))
            self.notes[sid] = (np.nan_to_num(times, nan=-np.inf), [text for _, text in items])

    def text(self, subject_id: str, before: float | None = None, last: int = 3) -> str | None:
        """The subject's `last` notes at or before `before`, newest first, joined by [SEP]; None without notes."""
        if subject_id not in self.notes:
            return None
        times, texts = self.notes[subject_id]
        n = len(texts) if before is None else int(np.searchsorted(times, before, side="right"))
        chosen = texts[max(0, n - last):n]
        return " [SEP] ".join(reversed(chosen)) if chosen else None


def run_tokenizer(ctx: SourceContext, texts: Callable[[], Iterable[str]]) -> PreTrainedTokenizerFast:
    """The run's text tokenizer: the configured pretrained one, else the run's saved one (when loading
    artifacts), else one built from `texts()` and saved with the run."""
    folder = ctx.artifact("text_tokenizer")
    if ctx.cfg.text_tokenizer:
        return load_text_tokenizer(ctx.cfg.text_tokenizer)
    if ctx.load_artifacts and folder is not None and folder.exists():
        return load_text_tokenizer(folder)
    tok = build_text_tokenizer(texts(), ctx.cfg.text_vocab_size)
    if folder is not None:
        tok.save_pretrained(str(folder))
    return tok


class NotesSource(ModalitySource):
    """A patient's text: their most recent notes before the prediction time, tokenized."""

    name = "text"

    def __init__(self, notes: SubjectNotes, tokenizer, last: int, max_length: int):
        self.notes, self.tokenizer, self.last, self.max_length = notes, tokenizer, last, max_length

    @classmethod
    def open(cls, ctx: SourceContext) -> "NotesSource":
        """Every subject's notes; the tokenizer is fitted on the training subjects' notes only."""
        notes = SubjectNotes(ctx.root, ctx.subjects)
        train = set(ctx.train_ids)
        tok = run_tokenizer(ctx, lambda: [t for sid, (_, ts) in notes.notes.items() if sid in train for t in ts])
        return cls(notes, tok, ctx.cfg.text_notes, ctx.cfg.text_max_length)

    def note_times(self, subject_id: str) -> np.ndarray:
        """Times [N] (days since epoch, ascending; -inf where undated) of the subject's notes (empty without notes)."""
        return self.notes.notes.get(subject_id, (np.zeros(0), []))[0]

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict]:
        """input_ids / attention_mask `[B, L]`; present `[B]` (False: no note before the time)."""
        texts = [self.notes.text(s.subject_id, s.prediction_time, self.last) for s in samples]
        enc = encode_texts(self.tokenizer, [t or "" for t in texts], self.max_length)
        return ModalityInput(enc, torch.tensor([t is not None for t in texts])), {}

    def sizes(self) -> dict[str, int]:
        """The text adapter's vocabulary size."""
        return {"vocab_size": len(self.tokenizer)}

