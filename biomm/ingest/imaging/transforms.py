"""The MONAI dictionary transforms that prepare a series for the model: orientation, spacing, intensity
window or scaling, and size, built from a `DicomIngestConfig`. The cache they feed is
`biomm.store.image_cache`."""
from __future__ import annotations

import numpy as np

from biomm.ingest.imaging.config import DicomIngestConfig

KEY = "image"


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


class SeriesTransforms:
    """The transforms of one ingest run, built once per spatial rank (2 and 3) and shared by all its series
    (none of these transforms keeps state between calls)."""

    def __init__(self, cfg: DicomIngestConfig):
        self.by_rank = {rank: build_transforms(cfg, rank) for rank in (2, 3)}

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Channel-first array (C, X, Y[, Z]) + 4x4 RAS affine -> transformed array, its affine, the transforms applied."""
        import torch
        from monai.data import MetaTensor

        compose, desc = self.by_rank[array.ndim - 1]
        img = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), affine=torch.as_tensor(affine))
        out = compose({KEY: img})[KEY]
        return out.detach().cpu().numpy(), np.asarray(out.affine, dtype=np.float64), [dict(d) for d in desc]
