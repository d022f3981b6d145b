"""Sequences as subjects (`data.kind: sequences`): each stored DNA or protein sequence of a cohort is a
subject with the modalities `sequence` (its tokens) and `text` (the prompt of its label, as cells have:
"a DNA region bound by Oct4"), labels coming from the ingest (`biomm ingest fasta --label-from ...`).

Tokens: ESM-2's alphabet for proteins, Nucleotide-Transformer-style non-overlapping k-mers for DNA
(`data.dna_kmer`), or the tokenizer saved beside a pretrained encoder (`adapters.sequence.pretrained`).
The tokenizer choice and the label categories are saved with the run (`sequence_data.json`), so that
inference, evaluation and queries read sequences exactly as training did."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomm.config import ConfigError
from biomm.data.config import DataConfig
from biomm.data.loaders import SplitLoaders
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext, open_source
from biomm.data.text import encode_texts, run_tokenizer
from biomm.store.cohort import Cohort
from biomm.store.sequences import read_sequences
from biomm.types import Batch, ModalityInput
from biomm.vocab.tokenizers import DnaTokenizer, SequenceTokenizer, sequence_tokenizer

DATA_ARTIFACT = "sequence_data.json"


def special_ids(tok: SequenceTokenizer) -> dict[str, int]:
    """The adapter config values a tokenizer decides: vocabulary size and its pad / mask / cls / eos ids."""
    if isinstance(tok, DnaTokenizer):
        return {"vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, "mask_token_id": tok.mask_id,
                "cls_token_id": tok.cls_id, "eos_token_id": tok.eos_id}
    hf = tok.tok
    ids = {"vocab_size": len(hf), "pad_token_id": hf.pad_token_id, "mask_token_id": hf.mask_token_id,
           "cls_token_id": hf.cls_token_id, "eos_token_id": hf.eos_token_id}
    missing = [k for k, v in ids.items() if v is None and k in ("pad_token_id", "mask_token_id")]
    if missing:
        raise ConfigError(f"the sequence tokenizer {tok.name} has no {', '.join(missing)}: masked modelling needs both")
    return {k: int(v) for k, v in ids.items() if v is not None}


def encode_sequences(tok: SequenceTokenizer, seqs: Iterable[str], max_tokens: int) -> tuple[list[np.ndarray], int]:
    """Token ids of each sequence (special tokens included), cut at `max_tokens`; and how many were cut."""
    out, cut = [], 0
    for s in seqs:
        ids = tok.encode(s)
        if len(ids) > max_tokens:
            ids, cut = ids[:max_tokens], cut + 1
        out.append(np.asarray(ids, dtype=np.int64))
    return out, cut


def pad_ids(ids: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """`input_ids` [B, L] long (padded with `pad_id`) and `attention_mask` [B, L] bool."""
    width = max((len(a) for a in ids), default=1) or 1
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, a in enumerate(ids):
        out[i, : len(a)] = torch.from_numpy(a)
        mask[i, : len(a)] = True
    return {"input_ids": out, "attention_mask": mask}


def run_sequence_tokenizer(ctx: SourceContext, alphabet: str | None) -> tuple[SequenceTokenizer, dict[str, Any]]:
    """The run's sequence tokenizer and its description: the pretrained encoder's own (a local folder), else
    ESM-2's (protein) or the k-mer one (DNA). When loading artifacts the saved choice wins and a cohort of
    the other alphabet is an error."""
    saved = ctx.artifact(DATA_ARTIFACT)
    info: dict[str, Any]
    if ctx.load_artifacts and saved is not None and saved.exists():
        info = json.loads(saved.read_text())["tokenizer"]
        if alphabet is not None and alphabet != info["alphabet"]:
            raise ConfigError(f"the model reads {info['alphabet']} sequences; cohort {ctx.root} holds {alphabet}")
    else:
        if alphabet is None:
            raise ConfigError(f"cohort {ctx.root} holds no sequence subjects (ingest FASTA with `biomm ingest fasta`)")
        pretrained = getattr(ctx.adapter, "pretrained", None)
        info = {"alphabet": alphabet, "kmer": ctx.cfg.dna_kmer, "pretrained": pretrained}
    tok = sequence_tokenizer(info["alphabet"], k=info["kmer"], pretrained_dir=info["pretrained"])
    return tok, info


class SequenceSource(ModalitySource):
    """The stored sequences of a cohort's sequence subjects, tokenized once: `input_ids` / `attention_mask` [B, L]."""

    name = "sequence"

    def __init__(self, tokenizer: SequenceTokenizer, info: dict[str, Any], ids: dict[str, np.ndarray],
                 max_tokens: int, cut: int = 0):
        self.tokenizer, self.info, self.ids, self.max_tokens, self.cut = tokenizer, info, ids, max_tokens, cut
        self.special = special_ids(tokenizer)

    @classmethod
    def open(cls, ctx: SourceContext) -> SequenceSource:
        """Every sequence subject's sequence (one alphabet per cohort), tokenized with the run's tokenizer."""
        with Cohort(ctx.root, create=False, read_only=True) as c:
            df = read_sequences(c)
        if len(df):
            if "subject_id" not in df:  # shards written before sequences were subjects
                df["subject_id"] = df["sequence_id"]
            df = df[df["link_kind"].fillna("") != "subject"]
            if ctx.subjects is not None:
                df = df[df["subject_id"].isin(set(ctx.subjects))]
        alphabets = sorted(set(df["alphabet"])) if len(df) else []
        if len(alphabets) > 1:
            raise ConfigError(f"cohort {ctx.root} mixes {' and '.join(alphabets)} sequences; a sequence model reads "
                              "one alphabet: ingest them into separate cohorts")
        tok, info = run_sequence_tokenizer(ctx, alphabets[0] if alphabets else None)
        encoded, cut = encode_sequences(tok, df["sequence"] if len(df) else [], ctx.cfg.sequence_max_tokens)
        ids = dict(zip(df["subject_id"] if len(df) else [], encoded))
        return cls(tok, info, ids, ctx.cfg.sequence_max_tokens, cut)

    def encode(self, seqs: list[str]) -> dict[str, torch.Tensor]:
        """Tensors for sequences outside the cohort (a query's FASTA): `input_ids` / `attention_mask` [B, L]."""
        ids, _ = encode_sequences(self.tokenizer, seqs, self.max_tokens)
        return pad_ids(ids, self.special["pad_token_id"])

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict[str, Any]]:
        """`input_ids` / `attention_mask` [B, L]; present [B] (False for a subject without a sequence)."""
        empty = np.zeros(0, dtype=np.int64)
        tensors = pad_ids([self.ids.get(s.subject_id, empty) for s in samples], self.special["pad_token_id"])
        return ModalityInput(tensors, torch.tensor([s.subject_id in self.ids for s in samples])), {}

    def sizes(self) -> dict[str, Any]:
        """The sequence adapter's vocabulary size and special-token ids."""
        return dict(self.special)


class SequenceDataModule(SplitLoaders):
    """Sequence subjects of a cohort by split: the sequence source plus, with `text`, each one's label prompt."""

    def __init__(self, cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None):
        super().__init__()
        self.root, self.cfg = Path(cohort_root), cfg
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.sources: dict[str, ModalitySource] = {}
        self.samples: dict[str, list[Sample]] = {}
        self.categories: list[str] = []
        self.tokenizer = None
        self.prompt_tokens: dict[str, torch.Tensor] | None = None
        self.feed_text = False

    def prepare(self, adapters: dict[str, Any] | None = None, load_artifacts: bool = False,
                inference: bool = False, subjects: list[str] | None = None) -> SequenceDataModule:
        """Read the cohort's sequence subjects, splits and labels; open the sequence source, build (or load) the
        label-prompt tokenizer. `inference`: every subject in `all`, no split-size checks, and the label prompts
        are not fed (a label is what inference asks); `subjects`: only these."""
        if "text" in self.cfg.modalities and not self.cfg.label_name:
            raise ConfigError("data.label_name is needed: a sequence's text is the prompt of its label")
        unknown = [m for m in self.cfg.modalities if m not in ("sequence", "text")]
        if unknown or "sequence" not in self.cfg.modalities:
            raise ConfigError(f"data.kind sequences feeds the modalities sequence and text; got {self.cfg.modalities}")
        with Cohort(self.root, create=False, read_only=True) as c:
            split_of = c.split_map(kind="sequence")
            rows = c.labels(self.cfg.label_name) if self.cfg.label_name else []
        if self.cfg.label_name and not rows and not load_artifacts:
            raise ConfigError(f"cohort {self.root} has no label {self.cfg.label_name!r} (data.label_name); ingest with "
                              "`biomm ingest fasta --label-from filename|header:KEY`")
        values = {sid: str(v) for sid, v, _ in rows}  # ordered by time: the latest wins
        saved = self.artifacts_dir / DATA_ARTIFACT if self.artifacts_dir else None
        if load_artifacts and saved is not None and saved.exists():
            self.categories = json.loads(saved.read_text())["categories"]
        else:
            self.categories = sorted(set(values.values()))
        code = {c: i for i, c in enumerate(self.categories)}
        ctx = SourceContext(self.root, self.cfg, [], artifacts_dir=self.artifacts_dir, load_artifacts=load_artifacts,
                            subjects=subjects, adapter=(adapters or {}).get("sequence"))
        source = open_source("sequence", ctx)
        self.sources = {"sequence": source}
        wanted = set(subjects) if subjects is not None else None

        def sample(sid: str) -> Sample:
            label = code.get(values.get(sid, ""), -1) if self.cfg.label_name else -1
            return Sample(sid, labels={self.cfg.label_name: float(label) if label >= 0 else float("nan")}
                          if self.cfg.label_name else {})

        ids = [sid for sid in source.ids if sid in split_of and (wanted is None or sid in wanted)]
        self.samples = {s: [sample(sid) for sid in ids if split_of[sid] == s] for s in ("train", "val", "test")}
        self.samples["all"] = [x for s in ("train", "val", "test") for x in self.samples[s]]
        self.subject_ids = [x.subject_id for x in self.samples["all"]]
        for split in () if inference else ("train", "val"):
            if len(self.samples[split]) < self.cfg.val_fraction_min:
                raise ConfigError(f"the {split} split of {self.root} has {len(self.samples[split])} sequence subject(s); "
                                  f"at least {self.cfg.val_fraction_min} are needed")
        # at inference a label is what is asked, never an input: the prompts are not fed (zero-shot embeds them apart)
        self.feed_text = "text" in self.cfg.modalities and not inference
        if "text" in self.cfg.modalities:
            prompts = self.prompts()
            text_ctx = SourceContext(self.root, self.cfg, [], artifacts_dir=self.artifacts_dir,
                                     load_artifacts=load_artifacts)
            self.tokenizer = run_tokenizer(text_ctx, lambda: prompts * 4)
            self.prompt_tokens = encode_texts(self.tokenizer, prompts, self.cfg.text_max_length)
        if self.artifacts_dir is not None and not load_artifacts:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"label_name": self.cfg.label_name, "categories": self.categories,
                                         "prompt": self.cfg.prompt, "tokenizer": source.info}, indent=2))
        return self

    def prompts(self) -> list[str]:
        """The label prompt of each category (`data.prompt` with the label filled in), in category order."""
        return [self.cfg.prompt.format(label=c) for c in self.categories]

    def collate(self, samples: list[Sample]) -> Batch:
        """Samples -> Batch: sequence tensors, the label prompt as text (absent without a label), label codes [B]."""
        seq, _ = self.sources["sequence"].batch(samples)
        mods = {"sequence": seq}
        labels = {}
        if self.cfg.label_name:
            codes = torch.tensor([s.labels[self.cfg.label_name] for s in samples], dtype=torch.float32)
            labels[self.cfg.label_name] = codes
            if self.prompt_tokens is not None and self.feed_text:
                known = ~torch.isnan(codes)
                idx = torch.where(known, codes, torch.zeros_like(codes)).long()
                mods["text"] = ModalityInput({k: v[idx] for k, v in self.prompt_tokens.items()}, known & seq.present)
        return Batch(mods, [s.subject_id for s in samples], labels, {})

    def sequence_batches(self, seqs: list[str], ids: list[str], batch_size: int | None = None) -> Iterable[Batch]:
        """Batches of sequences outside the cohort (only the sequence modality), for embedding a query's FASTA."""
        source: SequenceSource = self.sources["sequence"]  # type: ignore[assignment]
        bs = batch_size or self.cfg.batch_size
        for a in range(0, len(seqs), bs):
            t = source.encode(seqs[a: a + bs])
            yield Batch({"sequence": ModalityInput(t, torch.ones(len(t["input_ids"]), dtype=torch.bool))},
                        list(ids[a: a + bs]))

    def vocab_sizes(self) -> dict[str, dict[str, Any]]:
        """Adapter config values the data decides: the sequence vocabulary and special ids, the text vocabulary."""
        out = {"sequence": self.sources["sequence"].sizes()}
        if self.tokenizer is not None:
            out["text"] = {"vocab_size": len(self.tokenizer)}
        return out

    @property
    def events(self):
        """Sequence subjects have no EHR events."""
        return None


