"""Config of DICOM ingest, the MONAI dictionary transforms that prepare a series for the model, and the
compressed cache (`imaging/<series-uid>.npz`) that training reads instead of DICOM.

npz layout: `image` float16|float32 (C, X, Y[, Z]) in MONAI index order (column, row, slice), values
in [0, 1] unless intensity normalisation is off; `affine` 4x4 RAS after the transforms;
`original_affine` 4x4 RAS of the decoded series; `spacing` (after transforms), `original_spacing`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from biomm.config import DeidConfig, StrictModel
from biomm.ingest.dicom_intensity import WINDOW_PRESETS
from biomm.store.atomic import atomic_write_bytes, sha256_bytes

KEY = "image"


class IntensityConfig(StrictModel):
    voi: bool = Field(False, description="Apply the file's VOI LUT or WindowCenter/Width after the modality LUT")
    window: Literal["lung", "soft_tissue", "bone", "brain"] | None = Field(
        None, description="Window preset (center/width in HU) mapped to [0, 1] with clipping")
    window_center: float | None = None
    window_width: float | None = Field(None, gt=0)
    normalize: Literal["minmax", "none"] = Field("minmax", description="Scaling when no window is given")

    @model_validator(mode="after")
    def _pair(self):
        if (self.window_center is None) != (self.window_width is None):
            raise ValueError("window_center and window_width go together")
        return self

    def window_range(self) -> tuple[float, float] | None:
        if self.window_center is not None:
            c, w = self.window_center, self.window_width
        elif self.window:
            c, w = WINDOW_PRESETS[self.window]
        else:
            return None
        return c - w / 2, c + w / 2


class PreprocessConfig(StrictModel):
    orientation: str | None = Field("RAS", description="Orientationd axcodes for 3D series; null keeps the stored order")
    pixdim: list[float] | None = Field(None, description="Spacingd target spacing in mm (2 values for images, 3 for volumes)")
    spatial_size_2d: list[int] | None = Field([128, 128], min_length=2, max_length=2)
    spatial_size_3d: list[int] | None = Field([96, 96, 64], min_length=3, max_length=3)
    resize: Literal["resize", "pad_crop"] = Field("resize", description="Resized (area/trilinear) or ResizeWithPadOrCropd")
    cache_dtype: Literal["float16", "float32"] = "float16"


class DicomIngestConfig(StrictModel):
    """`biomm ingest dicom` / `dicomweb` config (configs/imaging/*.yaml)."""

    intensity: IntensityConfig = IntensityConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    deid: DeidConfig = DeidConfig()
    workers: int = Field(0, ge=0, description="Decoding processes; 0 = one per CPU core (at most one per series)")
    store_header: bool = Field(True, description="Keep the de-identified header of the first instance as imaging/<uid>.json")


def build_transforms(cfg: DicomIngestConfig, rank: int):
    """The MONAI Compose for a series of spatial `rank` (2 or 3), and its description for provenance."""
    from monai.transforms import (Compose, Orientationd, Resized, ResizeWithPadOrCropd, ScaleIntensityd,
                                  ScaleIntensityRanged, Spacingd)

    pre, ops, desc = cfg.preprocess, [], []
    if rank == 3 and pre.orientation:
        ops.append(Orientationd(keys=KEY, axcodes=pre.orientation))
        desc.append({"name": "Orientationd", "axcodes": pre.orientation})
    if pre.pixdim:
        pixdim = (list(pre.pixdim) + [pre.pixdim[-1]] * 3)[:rank]
        ops.append(Spacingd(keys=KEY, pixdim=pixdim, mode="bilinear"))
        desc.append({"name": "Spacingd", "pixdim": pixdim})
    window = cfg.intensity.window_range()
    if window is not None:
        ops.append(ScaleIntensityRanged(keys=KEY, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True))
        desc.append({"name": "ScaleIntensityRanged", "a_min": window[0], "a_max": window[1], "b_min": 0.0, "b_max": 1.0})
    elif cfg.intensity.normalize == "minmax":
        ops.append(ScaleIntensityd(keys=KEY, minv=0.0, maxv=1.0))
        desc.append({"name": "ScaleIntensityd", "minv": 0.0, "maxv": 1.0})
    size = pre.spatial_size_2d if rank == 2 else pre.spatial_size_3d
    if size:
        if pre.resize == "resize":
            mode = "area"
            ops.append(Resized(keys=KEY, spatial_size=list(size), mode=mode))
            desc.append({"name": "Resized", "spatial_size": list(size), "mode": mode})
        else:
            ops.append(ResizeWithPadOrCropd(keys=KEY, spatial_size=list(size)))
            desc.append({"name": "ResizeWithPadOrCropd", "spatial_size": list(size)})
    return Compose(ops), desc


_TRANSFORMS: dict[tuple[str, int], tuple[Any, list[dict]]] = {}


def _transforms(cfg: DicomIngestConfig, rank: int):
    """`build_transforms`, built once per (config, rank) in a process: a worker reuses them for every series
    (none of these transforms keeps state between calls)."""
    key = (cfg.model_dump_json(include={"intensity", "preprocess"}), rank)
    if key not in _TRANSFORMS:
        if len(_TRANSFORMS) > 16:
            _TRANSFORMS.clear()
        _TRANSFORMS[key] = build_transforms(cfg, rank)
    compose, desc = _TRANSFORMS[key]
    return compose, [dict(d) for d in desc]


def preprocess(array: np.ndarray, affine: np.ndarray, cfg: DicomIngestConfig) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Channel-first array + RAS affine -> transformed array, its affine, and the transforms applied."""
    import torch
    from monai.data import MetaTensor

    rank = array.ndim - 1
    compose, desc = _transforms(cfg, rank)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), affine=torch.as_tensor(affine))
    out = compose({KEY: img})[KEY]
    return out.detach().cpu().numpy(), np.asarray(out.affine, dtype=np.float64), desc


def spacing_of(affine: np.ndarray, rank: int) -> list[float]:
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :rank], axis=0)]


def write_cache(path: Path, image: np.ndarray, affine: np.ndarray, original_affine: np.ndarray,
                original_spacing: list[float], dtype: str) -> str:
    """Atomic, compressed npz; returns its sha256. The archive is built in memory and hashed there, so
    the file is not read back to checksum it."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf, image=image.astype(dtype, copy=False), affine=affine, original_affine=original_affine,
        spacing=np.array(spacing_of(affine, image.ndim - 1)), original_spacing=np.array(original_spacing),
    )
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_cached(path: str | Path) -> dict[str, Any]:
    """What training reads: {'image': (C, X, Y[, Z]) array, 'affine': 4x4 RAS, ...}."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
