"""The image cache: one compressed `imaging/<series-uid>.npz` per series, what training reads instead of DICOM.

npz layout: `image` float16|float32 (C, X, Y[, Z]) in MONAI index order (column, row, slice), values
in [0, 1] unless intensity normalisation is off; `affine` 4x4 RAS after the transforms;
`original_affine` 4x4 RAS of the decoded series; `spacing` (after transforms), `original_spacing`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from biomm.store.atomic import atomic_write_bytes, sha256_bytes


def spacing_of(affine: np.ndarray, rank: int) -> list[float]:
    """Voxel spacing (mm) along the first `rank` axes of a 4x4 affine."""
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :rank], axis=0)]


def write_cache(path: Path, image: np.ndarray, affine: np.ndarray, original_affine: np.ndarray,
                original_spacing: list[float], dtype: str) -> str:
    """Write `image` (C, X, Y[, Z]) and its geometry as an atomic, compressed npz; returns its sha256.

    The archive is built in memory and hashed there, so the file is not read back to checksum it."""
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
