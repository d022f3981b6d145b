"""Text for the model: a BERT-style WordPiece tokenizer and the cohort's notes per subject.

With no network there is no hub tokenizer: `build_text_tokenizer` makes a WordPiece vocabulary
(the `tokenizers` library, as BERT's) from the texts at hand — the cohort's notes, label prompts —
and wraps it as a `transformers` fast tokenizer, saved with the run. A user's own pretrained
tokenizer loads from a local directory instead."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from biomm.data.ehr import days_since_epoch
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext
from biomm.store.events import read_notes
from biomm.types import ModalityInput

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_text_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A lower-cased WordPiece tokenizer (BERT's normaliser and pre-tokeniser) for `texts`.

    The vocabulary is chosen deterministically — special tokens, every character seen (alone and as
    a `##` continuation), then whole words by frequency (ties by spelling) — because the `tokenizers`
    WordPiece trainer breaks ties in hash order, and the same data must give the same model."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({ch for word in counts for ch in word})
    vocab: list[str] = list(SPECIAL_TOKENS) + chars + [f"##{ch}" for ch in chars]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def load_text_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved in a local folder (`save_pretrained`), never fetched."""
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


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

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict]:
        """input_ids / attention_mask `[B, L]`; present `[B]` (False: no note before the time)."""
        texts = [self.notes.text(s.subject_id, s.prediction_time, self.last) for s in samples]
        enc = encode_texts(self.tokenizer, [t or "" for t in texts], self.max_length)
        return ModalityInput(enc, torch.tensor([t is not None for t in texts])), {}

    def sizes(self) -> dict[str, int]:
        """The text adapter's vocabulary size."""
        return {"vocab_size": len(self.tokenizer)}

