"""Lightning DataModules: a cohort's splits -> `Batch`es with presence masks.

Patients: each sample is a subject (with an optional prediction time); EHR events, the latest
image and the latest notes before that time are gathered per batch, so subjects with any subset
of modalities train together. Cells: minibatches stream out-of-core from the cohort's .h5ad in
shuffled chunks, the text of a cell being its label prompt ("a B cell").

Vocabularies and tokenizers are built from the training split only and saved as artifacts next to
the run, so that export and query use exactly what training saw."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from biomm.config import ConfigError
from biomm.data.config import DataConfig
from biomm.data.loaders import SplitLoaders
from biomm.data.omics import CellChunkDataset
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext, open_source
from biomm.data.text import encode_texts, run_tokenizer
from biomm.store.cohort import Cohort
from biomm.types import Batch, ModalityInput

ARTIFACTS = "artifacts"


def check_modalities(wanted: list[str], available: dict[str, int], cohort_root: Path) -> None:
    """Every wanted modality must have data in the cohort; the error lists what it has."""
    missing = [m for m in wanted if m not in available]
    if missing:
        have = ", ".join(f"{m} ({n} subjects)" for m, n in sorted(available.items())) or "nothing"
        raise ConfigError(f"cohort {cohort_root} has no {', '.join(missing)} data; it has: {have}")


class Collator:
    """Samples -> Batch: each modality source gives its tensors and presence mask; labels are stacked."""

    def __init__(self, sources: dict[str, ModalitySource]):
        self.sources = sources

    def __call__(self, samples: list[Sample]) -> Batch:
        mods: dict[str, ModalityInput] = {}
        extras: dict[str, Any] = {}
        for name, source in self.sources.items():
            mods[name], more = source.batch(samples)
            extras.update(more)
        names = sorted({k for s in samples for k in s.labels})
        labels = {name: torch.tensor([s.labels.get(name, float("nan")) for s in samples], dtype=torch.float32)
                  for name in names}
        return Batch(mods, [s.subject_id for s in samples], labels, extras)


class PatientDataModule(SplitLoaders):
    """Patients of a cohort: EHR events, imaging series and notes, by split."""

    def __init__(self, cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None,
                 samples: dict[str, list[Sample]] | None = None):
        super().__init__()
        self.root, self.cfg = Path(cohort_root), cfg
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.given_samples = samples
        self.sources: dict[str, ModalitySource] = {}
        self.collate: Collator | None = None
        self.samples: dict[str, list[Sample]] = {}

    # ----------------------------------------------------------------------------- setup
    def prepare(self, adapters: dict[str, Any] | None = None, load_artifacts: bool = False,
                inference: bool = False, subjects: list[str] | None = None) -> "PatientDataModule":
        """Read the cohort, check it can feed the model, open one source per modality. Fails early.

        `adapters`: the model's adapter configs (input sizes the data must match). `inference`: every
        subject is used (no split-size checks) and vocabularies are the run's saved ones. `subjects`
        (inference only): read just these subjects' data, e.g. to re-embed the ones that changed."""
        wanted = set(subjects) if subjects is not None else None
        with Cohort(self.root, create=False, read_only=True) as c:
            check_modalities(self.cfg.modalities, c.modality_counts(), self.root)
            splits = {s: c.split_subjects(s) for s in ("train", "val", "test")}
            records = {m: [r for r in c.records(m) if wanted is None or r["subject_id"] in wanted]
                       for m in self.cfg.modalities if m != "ehr"}  # EHR reads its shards
            with_any = c.subjects_with_any(self.cfg.modalities)
        if self.given_samples is not None:
            self.samples = self.given_samples
        else:
            labels = self._labels()
            self.samples = {s: [Sample(sid, labels=labels.get(sid, {})) for sid in subjects if sid in with_any]
                            for s, subjects in splits.items()}
        if inference:
            self.samples["all"] = [s for split in ("train", "val", "test") for s in self.samples.get(split, [])]
            if wanted is not None:
                self.samples = {"all": [s for s in self.samples["all"] if s.subject_id in wanted]}
        for split in () if inference else ("train", "val"):
            if len(self.samples.get(split, [])) < self.cfg.val_fraction_min:
                raise ConfigError(
                    f"the {split} split of {self.root} has {len(self.samples.get(split, []))} subject(s) with "
                    f"{'/'.join(self.cfg.modalities)} data; at least {self.cfg.val_fraction_min} are needed")
        ctx = SourceContext(self.root, self.cfg, [s.subject_id for s in self.samples.get("train", [])],
                            artifacts_dir=self.artifacts_dir, load_artifacts=load_artifacts,
                            subjects=[s.subject_id for s in self.samples["all"]] if subjects is not None else None)
        adapters = adapters or {}
        self.sources = {m: open_source(m, replace(ctx, records=records.get(m, []), adapter=adapters.get(m)))
                        for m in self.cfg.modalities}
        for source in self.sources.values():
            source.link(self.sources)
        if self.cfg.train_times == "notes" and not inference and self.given_samples is None:
            self.samples["train"] = self.samples["train"] + self._note_time_samples(self.samples["train"])
        self.collate = Collator(self.sources)
        return self

    def _note_time_samples(self, train: list[Sample]) -> list[Sample]:
        """One unlabelled sample per training subject and note time (before the last note: the whole-record
        sample covers that one); labels stay with the whole-record samples, whose prediction time they were made for."""
        source = self.sources.get("text")
        if source is None:
            raise ConfigError("data.train_times: notes needs the text modality in data.modalities")
        out = []
        for s in train:
            times = source.note_times(s.subject_id)
            out += [Sample(s.subject_id, prediction_time=float(t)) for t in np.unique(times[np.isfinite(times)])[:-1]]
        return out

    @property
    def events(self):
        """The EHR events (`EhrEvents`) this module reads, or None without the ehr modality."""
        source = self.sources.get("ehr")
        return source.events if source is not None else None

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

    def vocab_sizes(self) -> dict[str, dict[str, Any]]:
        """Adapter config values the data decides: `{modality: {field: value}}`."""
        return {m: sizes for m, source in self.sources.items() if (sizes := source.sizes())}

    def adapter_tables(self) -> dict[str, dict[str, Any]]:
        """Fixed tensors the data gives each adapter (`Adapter.set_tables`): `{modality: {name: tensor}}`."""
        return {m: tables for m, source in self.sources.items() if (tables := source.tables())}



class CellBatches(torch.utils.data.IterableDataset):
    """Wraps the out-of-core omics loader: its dicts -> Batch (omics + label-prompt text)."""

    def __init__(self, cells: CellChunkDataset, modalities: list[str], label_key: str | None,
                 prompt_tokens: dict[str, torch.Tensor] | None):
        self.cells, self.modalities, self.label_key, self.prompt_tokens = cells, modalities, label_key, prompt_tokens

    def __len__(self) -> int:
        return len(self.cells)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the chunk shuffle for `epoch`."""
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


class CellDataModule(SplitLoaders):
    """Cells of a cohort's omics file, split by the manifest's subject splits."""

    def __init__(self, cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None):
        super().__init__()
        self.root, self.cfg = Path(cohort_root), cfg
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        self.tokenizer = None
        self.categories: list[str] = []
        self.prompt_tokens: dict[str, torch.Tensor] | None = None

    def prepare(self, adapters: dict[str, Any] | None = None, load_artifacts: bool = False,
                inference: bool = False) -> "CellDataModule":
        """Open the cohort's omics file, split its cells, build (or load) the label-prompt tokenizer.

        `adapters`: the model's adapter configs (an MLP omics encoder reads the dense HVG vector)."""
        with Cohort(self.root, create=False, read_only=True) as c:
            # a cell's text is its label prompt, made here, not a stored record
            check_modalities([m for m in self.cfg.modalities if m != "text"], c.modality_counts(), self.root)
            files = sorted({r["path"] for r in c.records("omics")})
            split_of = c.split_map(kind="cell")
        if len(files) != 1:
            raise ConfigError(f"cell training reads one omics file; cohort {self.root} has {len(files)}: {files}")
        self.h5ad = self.root / files[0]
        if "text" in self.cfg.modalities and not self.cfg.label_key:
            raise ConfigError("data.label_key is needed: a cell's text is the prompt of its label")
        mlp = getattr((adapters or {}).get("omics"), "encoder", "") == "mlp"
        loader_cfg = self.cfg.omics.model_copy(update={
            "label_keys": sorted(set(self.cfg.omics.label_keys) | ({self.cfg.label_key} if self.cfg.label_key else set())),
            "batch_size": self.cfg.batch_size, **({"x_mapped_only": True} if mlp else {})})
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
            prompts = [self.cfg.prompt.format(label=c) for c in self.categories]
            ctx = SourceContext(self.root, self.cfg, [], artifacts_dir=self.artifacts_dir, load_artifacts=load_artifacts)
            self.tokenizer = run_tokenizer(ctx, lambda: prompts * 4)
            self.prompt_tokens = encode_texts(self.tokenizer, prompts, self.cfg.text_max_length)
            if self.artifacts_dir is not None and not load_artifacts:
                (self.artifacts_dir / "cell_labels.json").write_text(json.dumps(
                    {"label_key": self.cfg.label_key, "categories": self.categories, "prompt": self.cfg.prompt}))
        self.n_genes = int(probe.var_token_ids.max()) + 1 if len(probe.var_token_ids) else 2
        self.n_hvg = len(probe.x_columns)
        self._omics_inputs = self.n_hvg if mlp else max(self.n_genes, 2)
        self._omics_gene_ids = [int(i) for i in probe.var_token_ids[probe.x_columns]] if mlp else None
        return self

    def _subject_ids(self, probe: CellChunkDataset) -> list[str]:
        import anndata as ad

        obs = ad.read_h5ad(self.h5ad, backed="r").obs
        col = "biomm_subject_id" if "biomm_subject_id" in obs else None
        return list(obs[col].astype(str)) if col else list(obs.index.astype(str))

    def vocab_sizes(self) -> dict[str, dict[str, int]]:
        """Adapter config values the data decides: the omics adapter's gene count (the HVG vector's length for
        an MLP encoder), the text adapter's vocabulary."""
        out: dict[str, dict] = {"omics": {"n_genes": self._omics_inputs,
                                          "input_values": "bins" if self.cfg.omics.tokens.value_mode == "binned" else "expression"}}
        if self._omics_gene_ids is not None:  # the mlp reads the HVG vector: which gene each position is
            out["omics"]["gene_ids"] = self._omics_gene_ids
        if self.tokenizer is not None:
            out["text"] = {"vocab_size": len(self.tokenizer)}
        return out

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        cfg = self.loader_cfg.model_copy(update={"shuffle": shuffle})
        cells = CellChunkDataset(self.h5ad, cfg, rows=self.rows[split])
        ds = CellBatches(cells, self.cfg.modalities, self.cfg.label_key, self.prompt_tokens)
        return DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)


def build_datamodule(cohort_root: str | Path, cfg: DataConfig, artifacts_dir: str | Path | None = None):
    """The data module for `cfg.kind`: patients (one source per modality), cells (streamed from the .h5ad) or
    sequences (each stored sequence a subject, its label prompt the text)."""
    if cfg.kind == "sequences":
        from biomm.data.sequence import SequenceDataModule

        return SequenceDataModule(cohort_root, cfg, artifacts_dir)
    return (CellDataModule if cfg.kind == "cells" else PatientDataModule)(cohort_root, cfg, artifacts_dir)

