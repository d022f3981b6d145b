"""Lightning DataModules: a cohort's splits -> `Batch`es with presence masks.

Patients: each sample is a subject (with an optional prediction time); EHR events, the latest
image and the latest notes before that time are gathered per batch, so subjects with any subset
of modalities train together. Cells: minibatches stream out-of-core from the cohort's .h5ad in
shuffled chunks, the text of a cell being its label prompt ("a B cell").

Vocabularies and tokenizers are built from the training split only and saved as artifacts next to
the run, so that export and query use exactly what training saw."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from biomm.config import ConfigError
from biomm.data.ehr import UNK, EhrEvents, EhrVocab, event_shards
from biomm.data.imaging import SubjectImages
from biomm.data.omics_loader import CellChunkDataset
from biomm.data.text import SubjectNotes, build_text_tokenizer, encode_texts, load_text_tokenizer
from biomm.store.cohort import Cohort
from biomm.train_config import DataConfig
from biomm.types import Batch, ModalityInput

ARTIFACTS = "artifacts"


@dataclass
class Sample:
    subject_id: str
    prediction_time: float | None = None  # days since epoch (shifted time)
    labels: dict[str, float] = field(default_factory=dict)


class SampleDataset(Dataset):
    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def cohort_modalities(cohort: Cohort) -> dict[str, int]:
    return dict(cohort.con.execute("SELECT modality, count(DISTINCT subject_id) FROM records GROUP BY 1").fetchall())


def check_modalities(wanted: list[str], available: dict[str, int], cohort_root: Path) -> None:
    missing = [m for m in wanted if m not in available]
    if missing:
        have = ", ".join(f"{m} ({n} subjects)" for m, n in sorted(available.items())) or "nothing"
        raise ConfigError(f"cohort {cohort_root} has no {', '.join(missing)} data; it has: {have}")


def check_vocabulary_coverage(ehr: EhrEvents, cohort_root: Path, minimum: float = 0.5) -> float:
    """A saved vocabulary must know most of a cohort's events, else the model would read mostly <unk>:
    a checkpoint trained on other data (another coding system, another site's codes)."""
    if not len(ehr.codes):
        return 1.0
    known = float((ehr.codes != UNK).mean())
    if known < minimum:
        unknown = sorted(set(ehr.codes_text[ehr.codes == UNK]))[:5]
        raise ConfigError(
            f"the model's EHR vocabulary does not match cohort {cohort_root}: only {known:.0%} of its events have "
            f"a known code (e.g. unknown: {', '.join(unknown)}); train or fine-tune a model on this kind of data")
    return known


class PatientCollator:
    """Builds a Batch from samples: one source per modality, each giving tensors and presence."""

    def __init__(self, modalities: list[str], cfg: DataConfig, ehr: EhrEvents | None, images: SubjectImages | None,
                 notes: SubjectNotes | None, tokenizer: Any | None):
        self.modalities, self.cfg = modalities, cfg
        self.ehr, self.images, self.notes, self.tokenizer = ehr, images, notes, tokenizer

    def __call__(self, samples: list[Sample]) -> Batch:
        sids = [s.subject_id for s in samples]
        pts = [s.prediction_time for s in samples]
        mods: dict[str, ModalityInput] = {}
        extras: dict[str, Any] = {}
        if "ehr" in self.modalities:
            tensors, present = self.ehr.tensors(sids, self.cfg.max_events, pts)
            mods["ehr"] = ModalityInput(tensors, present)
        if "imaging" in self.modalities:
            tensors, present, series = self.images.tensors(sids, pts)
            mods["imaging"] = ModalityInput(tensors, present)
            extras["imaging_series"] = series
        if "text" in self.modalities:
            texts = [self.notes.text(sid, pt, self.cfg.text_notes) for sid, pt in zip(sids, pts)]
            enc = encode_texts(self.tokenizer, [t or "" for t in texts], self.cfg.text_max_length)
            mods["text"] = ModalityInput(enc, torch.tensor([t is not None for t in texts]))
        labels = {}
        names = sorted({k for s in samples for k in s.labels})
        for name in names:
            labels[name] = torch.tensor([s.labels.get(name, float("nan")) for s in samples], dtype=torch.float32)
        return Batch(mods, sids, labels, extras)


class _SplitLoaders(L.LightningDataModule):
    """Lightning's loaders by split, from the subclass's `_loader(split, shuffle)`."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def loader(self, split: str) -> DataLoader:
        return self._loader(split, False)


class PatientDataModule(_SplitLoaders):
    """Patients of a cohort: EHR events, imaging series and notes, by split."""

    def __init__(self, cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None,
                 samples: dict[str, list[Sample]] | None = None):
        super().__init__()
        self.root, self.cfg = Path(cohort_root), cfg
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.given_samples = samples
        self.vocab: EhrVocab | None = None
        self.tokenizer = None
        self.collate: PatientCollator | None = None
        self.samples: dict[str, list[Sample]] = {}

    # ----------------------------------------------------------------------------- setup
    def prepare(self, imaging_size: int = 64, spatial_dims: int = 2, load_artifacts: bool = False,
                inference: bool = False) -> "PatientDataModule":
        """Read the cohort, check it can feed the model, build (or load) vocabularies. Fails early.

        `inference`: every subject is used (no split-size checks); vocabularies must be loaded."""
        with Cohort(self.root, create=False, read_only=True) as c:
            check_modalities(self.cfg.modalities, cohort_modalities(c), self.root)
            splits = {s: c.split_subjects(s) for s in ("train", "val", "test")}
            records = c.records("imaging") if "imaging" in self.cfg.modalities else []
            with_any = set(r[0] for r in c.con.execute(
                "SELECT DISTINCT subject_id FROM records WHERE modality IN (SELECT unnest(?))",
                [self.cfg.modalities]).fetchall())
        if self.given_samples is not None:
            self.samples = self.given_samples
        else:
            labels = self._labels()
            self.samples = {s: [Sample(sid, labels=labels.get(sid, {})) for sid in subjects if sid in with_any]
                            for s, subjects in splits.items()}
        if inference:
            self.samples["all"] = [s for split in ("train", "val", "test") for s in self.samples.get(split, [])]
        for split in () if inference else ("train", "val"):
            if len(self.samples.get(split, [])) < self.cfg.val_fraction_min:
                raise ConfigError(
                    f"the {split} split of {self.root} has {len(self.samples.get(split, []))} subject(s) with "
                    f"{'/'.join(self.cfg.modalities)} data; at least {self.cfg.val_fraction_min} are needed")
        train_ids = [s.subject_id for s in self.samples["train"]]
        ehr = images = notes = None
        if "ehr" in self.cfg.modalities:
            self.vocab = self._ehr_vocab(train_ids, load_artifacts)
            ehr = EhrEvents(self.root, self.vocab)
            if load_artifacts:
                check_vocabulary_coverage(ehr, self.root)
        if "imaging" in self.cfg.modalities:
            mods = tuple(self.cfg.imaging_modalities) if self.cfg.imaging_modalities else None
            images = SubjectImages(self.root, records, spatial_dims, imaging_size, mods)
        if "text" in self.cfg.modalities:
            notes = SubjectNotes(self.root)
            self.tokenizer = self._text_tokenizer(notes, set(train_ids), load_artifacts)
        self.collate = PatientCollator(self.cfg.modalities, self.cfg, ehr, images, notes, self.tokenizer)
        return self

    def _labels(self) -> dict[str, dict[str, float]]:
        """Each subject's latest value of `data.label_name` (subjects without one get none: masked out)."""
        if not self.cfg.label_name:
            return {}
        with Cohort(self.root, create=False, read_only=True) as c:
            rows = c.labels(self.cfg.label_name)
        if not rows:
            raise ConfigError(f"cohort {self.root} has no label {self.cfg.label_name!r} (data.label_name)")
        out: dict[str, dict[str, float]] = {}
        for sid, value, _ in rows:  # ordered by time: the latest wins
            out[sid] = {self.cfg.label_name: float(value)}
        return out

    def _ehr_vocab(self, train_ids: list[str], load: bool) -> EhrVocab:
        path = self.artifacts_dir / "ehr_vocab.json" if self.artifacts_dir else None
        if load and path and path.exists():
            return EhrVocab.load(path)
        vocab = EhrVocab.build(duckdb.connect(), event_shards(self.root), train_ids, self.cfg.ehr_min_count)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            vocab.save(path)
        return vocab

    def _text_tokenizer(self, notes: SubjectNotes, train_ids: set[str], load: bool):
        folder = self.artifacts_dir / "text_tokenizer" if self.artifacts_dir else None
        if self.cfg.text_tokenizer:
            return load_text_tokenizer(self.cfg.text_tokenizer)
        if load and folder and folder.exists():
            return load_text_tokenizer(folder)
        texts = [t for sid, (_, ts) in notes.notes.items() if sid in train_ids for t in ts]
        tok = build_text_tokenizer(texts, self.cfg.text_vocab_size)
        if folder:
            tok.save_pretrained(str(folder))
        return tok

    def vocab_sizes(self) -> dict[str, dict[str, int]]:
        """Adapter config values the data decides: `{modality: {field: value}}`."""
        out: dict[str, dict[str, int]] = {}
        if self.vocab is not None:
            out["ehr"] = {"vocab_size": max(self.vocab.size, 4)}
        if self.tokenizer is not None:
            out["text"] = {"vocab_size": len(self.tokenizer)}
        return out

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(SampleDataset(self.samples[split]), batch_size=self.cfg.batch_size, shuffle=shuffle,
                          collate_fn=self.collate, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0, drop_last=False)



class CellBatches(torch.utils.data.IterableDataset):
    """Wraps the out-of-core omics loader: its dicts -> Batch (omics + label-prompt text)."""

    def __init__(self, cells: CellChunkDataset, modalities: list[str], label_key: str | None,
                 prompt_tokens: dict[str, torch.Tensor] | None):
        self.cells, self.modalities, self.label_key, self.prompt_tokens = cells, modalities, label_key, prompt_tokens

    def __len__(self) -> int:
        return len(self.cells)

    def set_epoch(self, epoch: int) -> None:
        self.cells.set_epoch(epoch)

    def __iter__(self):
        for b in self.cells:
            n = len(b["cell_ids"])
            omics = {k: b[k] for k in ("genes", "values", "mask", "x") if k in b}
            mods = {"omics": ModalityInput(omics, torch.ones(n, dtype=torch.bool))}
            labels = {}
            if self.label_key:
                codes = b["labels"][self.label_key].long()
                labels[self.label_key] = codes.float().masked_fill(codes < 0, float("nan"))
                if "text" in self.modalities:
                    idx = codes.clamp_min(0)
                    mods["text"] = ModalityInput({k: v[idx] for k, v in self.prompt_tokens.items()}, codes >= 0)
            yield Batch(mods, list(b.get("subject_ids") or b["cell_ids"]), labels, {"cell_ids": b["cell_ids"]})


class CellDataModule(_SplitLoaders):
    """Cells of a cohort's omics file, split by the manifest's subject splits."""

    def __init__(self, cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None):
        super().__init__()
        self.root, self.cfg = Path(cohort_root), cfg
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.tokenizer = None
        self.categories: list[str] = []
        self.prompt_tokens: dict[str, torch.Tensor] | None = None

    def prepare(self, load_artifacts: bool = False, inference: bool = False, **_: Any) -> "CellDataModule":
        with Cohort(self.root, create=False, read_only=True) as c:
            # a cell's text is its label prompt, made here, not a stored record
            check_modalities([m for m in self.cfg.modalities if m != "text"], cohort_modalities(c), self.root)
            files = sorted({r["path"] for r in c.records("omics")})
            split_of = dict(c.con.execute(
                "SELECT s.subject_id, s.split FROM splits s JOIN subjects USING (subject_id) WHERE kind = 'cell'").fetchall())
        if len(files) != 1:
            raise ConfigError(f"cell training reads one omics file; cohort {self.root} has {len(files)}: {files}")
        self.h5ad = self.root / files[0]
        if "text" in self.cfg.modalities and not self.cfg.label_key:
            raise ConfigError("data.label_key is needed: a cell's text is the prompt of its label")
        loader_cfg = self.cfg.omics.model_copy(update={
            "label_keys": sorted(set(self.cfg.omics.label_keys) | ({self.cfg.label_key} if self.cfg.label_key else set())),
            "batch_size": self.cfg.batch_size})
        probe = CellChunkDataset(self.h5ad, loader_cfg)
        subject_ids = self._subject_ids(probe)
        self.subject_ids = subject_ids
        self.rows = {s: [i for i, sid in enumerate(subject_ids) if split_of.get(sid) == s] for s in ("train", "val", "test")}
        self.rows["all"] = list(range(len(subject_ids)))
        for split in () if inference else ("train", "val"):
            if len(self.rows[split]) < self.cfg.val_fraction_min:
                raise ConfigError(f"the {split} split of {self.root} has {len(self.rows[split])} cells")
        self.loader_cfg = loader_cfg
        if self.cfg.label_key:
            self.categories = probe.label_categories.get(self.cfg.label_key) or []
        if "text" in self.cfg.modalities:
            self.tokenizer = self._tokenizer(load_artifacts)
            prompts = [self.cfg.prompt.format(label=c) for c in self.categories]
            self.prompt_tokens = encode_texts(self.tokenizer, prompts, self.cfg.text_max_length)
        self.n_genes = int(probe.var_token_ids.max()) + 1 if len(probe.var_token_ids) else 2
        self.n_hvg = len(probe.x_columns)
        return self

    def _subject_ids(self, probe: CellChunkDataset) -> list[str]:
        import anndata as ad

        obs = ad.read_h5ad(self.h5ad, backed="r").obs
        col = "biomm_subject_id" if "biomm_subject_id" in obs else None
        return list(obs[col].astype(str)) if col else list(obs.index.astype(str))

    def _tokenizer(self, load: bool):
        folder = self.artifacts_dir / "text_tokenizer" if self.artifacts_dir else None
        if self.cfg.text_tokenizer:
            return load_text_tokenizer(self.cfg.text_tokenizer)
        if load and folder and folder.exists():
            return load_text_tokenizer(folder)
        tok = build_text_tokenizer([self.cfg.prompt.format(label=c) for c in self.categories] * 4, self.cfg.text_vocab_size)
        if folder:
            tok.save_pretrained(str(folder))
            (self.artifacts_dir / "cell_labels.json").write_text(json.dumps(
                {"label_key": self.cfg.label_key, "categories": self.categories, "prompt": self.cfg.prompt}))
        return tok

    def vocab_sizes(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"omics": {"n_genes": max(self.n_genes, 2)}}
        if self.tokenizer is not None:
            out["text"] = {"vocab_size": len(self.tokenizer)}
        return out

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        cfg = self.loader_cfg.model_copy(update={"shuffle": shuffle})
        cells = CellChunkDataset(self.h5ad, cfg, rows=self.rows[split])
        ds = CellBatches(cells, self.cfg.modalities, self.cfg.label_key, self.prompt_tokens)
        return DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)



def build_datamodule(cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None):
    return (CellDataModule if cfg.kind == "cells" else PatientDataModule)(cohort_root, cfg, artifacts_dir)

