"""Imaging for the model: each subject's cached series (imaging/<uid>.npz, written by DICOM ingest),
chosen by time, resized to the adapter's input size, batched with a presence mask."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize

from biomm.data.ehr import days_since_epoch
from biomm.data.samples import Sample
from biomm.data.source import ModalitySource, SourceContext
from biomm.types import ModalityInput
from biomm.store.image_cache import load_cached


def _study_day(provenance: dict) -> float:
    date = provenance.get("study_date")
    if not date:
        return -np.inf
    return float(days_since_epoch(np.array([np.datetime64(datetime.strptime(date[:8], "%Y%m%d"), "us")]))[0])


class SubjectImages:
    """Per subject: its imaging records (time, cache path, provenance), in time order."""

    memory_limit = 512 * 2**20  # decoded inputs kept in memory, at most (bytes)

    def __init__(self, cohort_root: str | Path, records: list[dict], spatial_dims: int = 2, img_size: int = 64,
                 modalities: tuple[str, ...] | None = None):
        self.root = Path(cohort_root)
        self.spatial_dims, self.img_size = spatial_dims, img_size
        self.by_subject: dict[str, list[tuple[float, str, dict]]] = {}
        for r in records:
            prov = r["provenance"] if isinstance(r["provenance"], dict) else json.loads(r["provenance"] or "{}")
            rank = len(prov.get("shape", [])) - 1
            if rank != spatial_dims:
                continue  # a 3D volume does not feed a 2D network (and vice versa)
            if modalities and prov.get("dicom_modality") not in modalities:
                continue
            self.by_subject.setdefault(r["subject_id"], []).append((_study_day(prov), r["path"], prov))
        for items in self.by_subject.values():
            items.sort(key=lambda x: x[0])
        self.resize = Resize([img_size] * spatial_dims, mode="area" if spatial_dims == 2 else "trilinear")
        self._memory: dict[str, torch.Tensor] = {}
        self._memory_bytes = 0

    def __contains__(self, subject_id: str) -> bool:
        return subject_id in self.by_subject

    def pick(self, subject_id: str, before: float | None = None, slack_days: float = 1.0) -> tuple[float, str, dict] | None:
        """The most recent series at or before `before` (+ slack for same-day studies), else None."""
        items = self.by_subject.get(subject_id)
        if not items:
            return None
        if before is None:
            return items[-1]
        eligible = [it for it in items if it[0] <= before + slack_days]
        return eligible[-1] if eligible else None

    def load(self, rel_path: str) -> torch.Tensor:
        """The series' model input; kept in memory once read (bounded), since every epoch reads it again."""
        hit = self._memory.get(rel_path)
        if hit is not None:
            return hit
        image = torch.from_numpy(load_cached(self.root / rel_path)["image"].astype(np.float32))
        if tuple(image.shape[1:]) != (self.img_size,) * self.spatial_dims:
            image = torch.as_tensor(self.resize(image))
        image = image[:1]  # the adapter takes one channel
        if self._memory_bytes + image.numel() * 4 <= self.memory_limit:
            self._memory[rel_path] = image
            self._memory_bytes += image.numel() * 4
        return image

    def tensors(self, subject_ids: list[str], prediction_times: list[float | None] | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str | None]]:
        """`{"image": [B, 1, *S]}`, present [B] bool, and the series uid used per subject (None where absent)."""
        shape = (1,) + (self.img_size,) * self.spatial_dims
        images, present, used = [], [], []
        for i, sid in enumerate(subject_ids):
            hit = self.pick(sid, prediction_times[i] if prediction_times is not None else None)
            if hit is None:
                images.append(torch.zeros(shape))  # masked out by `present`, never read as data
                present.append(False)
                used.append(None)
            else:
                images.append(self.load(hit[1]))
                present.append(True)
                used.append(hit[2].get("series_uid"))
        return {"image": torch.stack(images)}, torch.tensor(present), used


class ImagingSource(ModalitySource):
    """Imaging for the model: each sample's latest series before its prediction time, at the adapter's size."""

    name = "imaging"

    def __init__(self, images: SubjectImages):
        self.images = images

    @classmethod
    def open(cls, ctx: SourceContext) -> "ImagingSource":
        """Index the cohort's imaging records; inputs are resized to the adapter's `img_size` and rank."""
        mods = tuple(ctx.cfg.imaging_modalities) if ctx.cfg.imaging_modalities else None
        dims, size = getattr(ctx.adapter, "spatial_dims", 2), getattr(ctx.adapter, "img_size", 64)
        return cls(SubjectImages(ctx.root, ctx.records, dims, size, mods))

    def batch(self, samples: list[Sample]) -> tuple[ModalityInput, dict]:
        """image `[B, 1, *size]` and present `[B]`; extras: the series uid used per sample."""
        tensors, present, series = self.images.tensors([s.subject_id for s in samples],
                                                       [s.prediction_time for s in samples])
        return ModalityInput(tensors, present), {"imaging_series": series}

