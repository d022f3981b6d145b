"""Cached images -> PNG for display. The cache holds (C, X, Y[, Z]) in MONAI order (column, row). Records
cached in Hounsfield units (no windowing, no normalisation) get the CT window presets; the others are
already scaled to [0, 1] and get contrast presets."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from biomm.ingest.imaging.config import WINDOW_PRESETS

# name -> (low, high) on [0, 1] values, or a callable stretch
CONTRAST_PRESETS = ("default", "auto", "high_contrast", "invert")
DISPLAY_MIN = 256


def in_hu(provenance: dict[str, Any]) -> bool:
    """Whether a series is CT kept in Hounsfield units (not normalised or windowed at ingest), so CT windows apply."""
    intensity = provenance.get("intensity") or {}
    return (intensity.get("normalize") == "none" and not intensity.get("window")
            and intensity.get("window_center") is None and provenance.get("dicom_modality") == "CT")


def presets_for(provenance: dict[str, Any]) -> list[str]:
    """The display presets a series offers: CT windows (and the full range) for a series kept in HU, else contrast presets."""
    return [*WINDOW_PRESETS, "full"] if in_hu(provenance) else list(CONTRAST_PRESETS)


def _scale(plane: np.ndarray, preset: str, hu: bool) -> np.ndarray:
    plane = plane.astype(np.float32)
    if hu and preset in WINDOW_PRESETS:
        center, width = WINDOW_PRESETS[preset]
        lo, hi = center - width / 2, center + width / 2
    elif preset == "auto" or preset == "full":
        lo, hi = (np.percentile(plane, [2, 98]) if preset == "auto" else (plane.min(), plane.max()))
    elif preset == "high_contrast":
        lo, hi = 0.25, 0.75
    else:  # default, invert
        lo, hi = 0.0, 1.0
    out = np.clip((plane - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return 1.0 - out if preset == "invert" else out


def render_png(image: np.ndarray, provenance: dict[str, Any], preset: str, slice_index: int | None) -> bytes:
    """One 8-bit grey PNG of channel 0 (the middle slice of a volume unless `slice_index`), at least 256 px."""
    allowed = presets_for(provenance)
    if preset not in allowed:
        raise ValueError(f"preset '{preset}' does not apply to this image; choose one of {', '.join(allowed)}")
    arr = np.asarray(image)[0]
    if arr.ndim == 3:
        z = arr.shape[2] // 2 if slice_index is None else slice_index
        if not 0 <= z < arr.shape[2]:
            raise ValueError(f"slice {z} is out of range 0..{arr.shape[2] - 1}")
        arr = arr[:, :, z]
    elif slice_index not in (None, 0):
        raise ValueError("a 2D image has only slice 0")
    plane = _scale(arr.T, preset, in_hu(provenance))  # (X, Y) -> rows are Y
    img = Image.fromarray((plane * 255).round().astype(np.uint8))
    factor = max(1, int(np.ceil(DISPLAY_MIN / max(img.size))))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
