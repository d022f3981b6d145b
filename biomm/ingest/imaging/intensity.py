"""Pixels to physical intensities: decode (pydicom with its GDCM and pylibjpeg plugins), modality LUT, optional VOI LUT,
palette colour, MONOCHROME1 inversion. Window presets (`config.WINDOW_PRESETS`) are applied later as a MONAI transform."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

from biomm.ingest.base import IngestError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_decodable(ds: Dataset, label: str) -> None:
    """IngestError for what cannot become an image: no pixel data, zero size, no decoder for the syntax."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        sop = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        raise IngestError(label, f"missing pixel data ({sop} holds no image)", field="PixelData")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise IngestError(label, f"zero-size image (Rows={rows}, Columns={cols}, NumberOfFrames={frames})", field="Rows")
    if "PixelData" not in ds:
        return
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        return  # pydicom infers it from the dataset
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise IngestError(label, f"unsupported transfer syntax {tsyntax} ({tsyntax.name}): no decoder exists",
                          field="TransferSyntaxUID") from None
    if not decoder.is_available:
        missing = "; ".join(f"{k}: {', '.join(v)}" for k, v in decoder.missing_dependencies.items()) if hasattr(
            decoder, "missing_dependencies") else ""
        raise IngestError(label, f"no installed decoder for transfer syntax {tsyntax.name} ({missing})",
                          field="TransferSyntaxUID")


def _shared_rescale(ds: Dataset) -> tuple[float, float] | None:
    """Rescale slope/intercept of enhanced multi-frame objects, kept in the functional groups."""
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(seq)
        if groups and "PixelValueTransformationSequence" in groups[0]:
            item = groups[0].PixelValueTransformationSequence[0]
            return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
    return None


def decode(ds: Dataset, label: str, *, voi: bool = False) -> np.ndarray:
    """Decoded image as float32 (frames, rows, columns, samples) in physical units (e.g. HU for CT)."""
    check_decodable(ds, label)
    try:
        arr = ds.pixel_array
    except ValueError as exc:
        reason = "truncated pixel data" if "less than expected" in str(exc) else f"pixel data cannot be decoded ({exc})"
        raise IngestError(label, reason[:300], field="PixelData") from None
    except Exception as exc:
        raise IngestError(label, f"pixel data cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}",
                          field="PixelData") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    samples = 3 if arr.ndim == (4 if frames > 1 else 3) else 1
    if samples == 1:
        if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
        elif (shared := _shared_rescale(ds)) is not None:
            arr = arr.astype(np.float32) * shared[0] + shared[1]
        if voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
            arr = apply_voi_lut(arr, ds, prefer_lut=True)
    arr = np.asarray(arr, dtype=np.float32)
    if samples == 1 and photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values bright: flip within the image's own range so air stays dark.
        arr = float(arr.max()) + float(arr.min()) - arr
    if frames == 1:
        arr = arr[None]
    if samples == 1:
        arr = arr[..., None]
    return arr
