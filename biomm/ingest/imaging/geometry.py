"""Series geometry: sort slices along the slice normal, derive spacing from positions, build a RAS affine.

Hand-written rather than MONAI's PydicomReader, which orders slices by InstanceNumber and takes the
spacing from the z coordinate only; here slices are ordered by their projection on the normal
(as GDCM/ITK do) and gaps, duplicates and mixed orientations are caught before stacking.

Index convention is MONAI's (PydicomReader with swap_ij): array axes (i, j, k) = (column, row, slice),
so the affine columns are row-cosine * column-spacing, column-cosine * row-spacing, normal * slice-spacing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryError(ValueError):
    """A series whose slices do not form one regular grid; the message is the quarantine reason."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Plane:
    """Geometry of one slice or frame (any part may be missing in projection images)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) as DICOM orders it
    thickness: float | None = None


@dataclass(frozen=True)
class Geometry:
    """A series' geometry: the order of its planes, the RAS affine, the spacing and whether it has a patient frame."""

    order: list[int]          # indices of the input planes, sorted along the normal
    affine: np.ndarray        # 4x4, RAS, maps (i, j, k) voxel indices to millimetres
    spacing: tuple[float, float, float]
    has_patient_frame: bool   # False for projection images (CR/DX/US): affine is in image space


def _spacing2d(p: Plane) -> tuple[float, float]:
    if p.pixel_spacing is None:
        return 1.0, 1.0
    row, col = (float(v) for v in p.pixel_spacing)
    return (row if row > 0 else 1.0), (col if col > 0 else 1.0)


def series_geometry(planes: list[Plane], *, rel_tol: float = 0.01, default_slice: float | None = None) -> Geometry:
    """Order and affine of a stack of planes; GeometryError on gaps, duplicates or mixed orientation."""
    if not planes:
        raise GeometryError("series has no images")
    row_sp, col_sp = _spacing2d(planes[0])
    if any(not np.allclose(_spacing2d(p), (row_sp, col_sp), rtol=1e-3) for p in planes[1:]):
        raise GeometryError("inconsistent series: pixel spacing differs between slices", "PixelSpacing")
    thick = default_slice or planes[0].thickness or 1.0
    if any(p.position is None or p.orientation is None for p in planes):
        if len(planes) > 1 and any(p.position is not None for p in planes):
            raise GeometryError("inconsistent series: some slices lack ImagePositionPatient", "ImagePositionPatient")
        # Projection or cine images: no patient frame, so an image-space grid with the pixel spacing.
        affine = np.diag([col_sp, row_sp, float(thick), 1.0])
        return Geometry(list(range(len(planes))), affine, (col_sp, row_sp, float(thick)), False)

    orient = np.array(planes[0].orientation, dtype=float)
    for p in planes[1:]:
        if not np.allclose(np.array(p.orientation, dtype=float), orient, atol=1e-4):
            raise GeometryError("inconsistent series: mixed slice orientations", "ImageOrientationPatient")
    r, c = orient[:3], orient[3:]
    normal = np.cross(r, c)
    positions = np.array([p.position for p in planes], dtype=float)
    proj = positions @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    steps = np.diff(proj[order])
    if len(planes) > 1:
        if np.any(steps < 1e-3):
            raise GeometryError("inconsistent series: duplicated slice positions", "ImagePositionPatient")
        dz = float(np.mean(steps))
        if np.max(np.abs(steps - dz)) > max(rel_tol * dz, 1e-3):
            raise GeometryError(
                f"inconsistent series: gap or uneven slice spacing (steps {np.min(steps):.3g}..{np.max(steps):.3g} mm)",
                "ImagePositionPatient",
            )
    else:
        dz = float(thick)
    lps = np.eye(4)
    lps[:3, 0] = r * col_sp
    lps[:3, 1] = c * row_sp
    lps[:3, 2] = normal * dz
    lps[:3, 3] = positions[order[0]]
    return Geometry(order, LPS_TO_RAS @ lps, (col_sp, row_sp, dz), True)


def to_lps(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) in LPS as ITK/SimpleITK report them, from a RAS affine."""
    lps = np.linalg.inv(LPS_TO_RAS) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return lps[:3, 3], spacing, lps[:3, :3] / spacing
