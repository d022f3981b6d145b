"""An exported model folder opened for inference: weights, saved vocabularies, the data config.

Needs neither the training code path nor the training cohort: the data modules are rebuilt from
the saved config and artifacts (vocabularies are loaded, never rebuilt). This module imports
nothing from the query or head layers; `biomm.load(DIR)` returns `biomm.query.api.Model`, which
adds `.query(...)` on top of `LoadedModel`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from biomm.config import ConfigError
from biomm.data.config import DataConfig
from biomm.data.datamodule import build_datamodule
from biomm.model.config import ModelConfig
from biomm.model.export import MANIFEST
from biomm.model.factory import load_model

TRAIN_CONFIG = "train_config.json"


class BundleConfig(BaseModel):
    """What inference reads of a run's `train_config.json`: its name, model and data sections (the rest,
    optimiser and trainer settings, is ignored)."""

    model_config = ConfigDict(extra="ignore")

    name: str = "biomm"
    model: ModelConfig = ModelConfig()
    data: DataConfig


@dataclass
class Embeddings:
    """Per-subject embeddings: `fused` [N, D], per modality [N, D] with a presence mask [N], labels [N]."""

    subject_ids: list[str]
    fused: np.ndarray
    modalities: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self, subject_id: str) -> int:
        """The row of `subject_id`; KeyError for a subject not embedded."""
        try:
            return self.subject_ids.index(subject_id)
        except ValueError:
            raise KeyError(f"unknown subject {subject_id!r}") from None

    def subset(self, rows: list[int]) -> "Embeddings":
        """The embeddings of the subjects at `rows`, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return Embeddings([self.subject_ids[i] for i in rows], self.fused[idx],
                          {m: a[idx] for m, a in self.modalities.items()}, {m: a[idx] for m, a in self.present.items()},
                          {k: v[idx] for k, v in self.labels.items()})

    def save(self, path: str | Path) -> None:
        """Write every array to one compressed .npz."""
        arrays = {"fused": self.fused, "subject_ids": np.array(self.subject_ids)}
        for m, a in self.modalities.items():
            arrays[f"mod_{m}"], arrays[f"present_{m}"] = a, self.present[m]
        for k, v in self.labels.items():
            arrays[f"label_{k}"] = v
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Embeddings":
        """Read what `save` wrote."""
        with np.load(path, allow_pickle=False) as z:
            mods = {k[4:]: z[k] for k in z.files if k.startswith("mod_")}
            return cls([str(s) for s in z["subject_ids"]], z["fused"], mods,
                       {m: z[f"present_{m}"] for m in mods},
                       {k[6:]: z[k] for k in z.files if k.startswith("label_")})


class LoadedModel:
    """A model folder written by `biomm export` (or a run folder's exported model), in eval mode."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / MANIFEST).exists():
            raise ConfigError(f"{self.folder} is not an exported biomm model (no {MANIFEST}); run `biomm export` first")
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        self.config = BundleConfig.model_validate_json((self.folder / TRAIN_CONFIG).read_text())
        self.model = load_model(self.folder).eval()
        self.metrics = json.loads((self.folder / "metrics.json").read_text()) if (self.folder / "metrics.json").exists() else {}

    def objectives(self):
        """The training objectives with their trained parameters (masked-modelling heads, temperature, LM)."""
        from safetensors.torch import load_file

        from biomm.objectives import build_objectives

        objs = build_objectives(self.model.config, self.model)
        path = self.folder / "objectives.safetensors"
        if path.exists():
            objs.load_state_dict(load_file(str(path)))
        return objs.eval()

    @property
    def modalities(self) -> list[str]:
        """The modalities the model was trained on."""
        return list(self.config.data.modalities)

    @property
    def kind(self) -> str:
        """`patients` (clinical model) or `cells` (virtual-cell model)."""
        return self.config.data.kind

    def datamodule(self, cohort: str | Path, modalities: list[str] | None = None, subjects: list[str] | None = None):
        """The cohort seen through this model's saved vocabularies (every subject, any split; or only `subjects`,
        patients models only)."""
        cfg = self.config.data
        if modalities is not None:
            cfg = cfg.model_copy(update={"modalities": modalities})
        dm = build_datamodule(cohort, cfg, self.folder / "artifacts")
        extra = {"subjects": subjects} if subjects is not None else {}
        dm.prepare(self.config.model.adapters, load_artifacts=True, inference=True, **extra)
        return dm

    @torch.no_grad()
    def embed_batches(self, batches) -> Embeddings:
        """Embeddings of every subject of an iterable of Batches (fused [N, D] and per modality [N, D])."""
        ids, fused, mods, present, labels = [], [], {}, {}, {}
        for batch in batches:
            out = self.model(batch)
            ids.extend(batch.subject_ids)
            fused.append(out.fused.float().numpy())
            for m, e in out.pooled.items():
                mods.setdefault(m, []).append(e.float().numpy())
                present.setdefault(m, []).append(out.present[m].numpy())
            for k, v in batch.labels.items():
                labels.setdefault(k, []).append(v.numpy())
        if not ids:
            raise ConfigError("nothing to embed: no subject has this model's modalities")
        cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
        return Embeddings(ids, np.concatenate(fused), cat(mods), cat(present), cat(labels))

    def embed(self, cohort: str | Path, split: str = "all") -> Embeddings:
        """Embeddings of every subject (or one split) of a cohort."""
        return self.embed_batches(self.datamodule(cohort).loader(split))


def load(folder: str | Path) -> LoadedModel:
    """Open an exported model for inference (the heads and the query engine take this)."""
    return LoadedModel(folder)
