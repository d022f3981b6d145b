"""Config of the DICOM and DICOMweb readers (`biomm ingest dicom|dicomweb`, configs/imaging/*.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from biomm.config import DeidConfig, StrictModel

# (center, width) in HU; the usual radiology presets.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


class IntensityConfig(StrictModel):
    """How stored values become intensities: LUTs, a window (preset or center/width) or min-max scaling."""

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
        """(low, high) of the window in stored units, or None when no window is set."""
        if self.window_center is not None:
            c, w = self.window_center, self.window_width
        elif self.window:
            c, w = WINDOW_PRESETS[self.window]
        else:
            return None
        return c - w / 2, c + w / 2


class PreprocessConfig(StrictModel):
    """The MONAI spatial transforms of a series and the dtype of its cache."""

    orientation: str | None = Field("RAS", description="Orientationd axcodes for 3D series; null keeps the stored order")
    pixdim: list[float] | None = Field(None, description="Spacingd target spacing in mm (2 values for images, 3 for volumes)")
    spatial_size_2d: list[int] | None = Field([128, 128], min_length=2, max_length=2)
    spatial_size_3d: list[int] | None = Field([96, 96, 64], min_length=3, max_length=3)
    resize: Literal["resize", "pad_crop"] = Field("resize", description="Resized (area/trilinear) or ResizeWithPadOrCropd")
    cache_dtype: Literal["float16", "float32"] = "float16"


class DicomProfileConfig(StrictModel):
    """Options of the DICOM PS3.15 basic confidentiality profile (Annex E) beyond the basic actions."""

    clean_descriptors: bool = Field(
        False, description="Clean Descriptors Option: keep free-text descriptions and comments (StudyDescription, "
                           "SeriesDescription, ImageComments, ...) with the header's names, ids, addresses and "
                           "every run of 4+ digits replaced, instead of removing them")
    retain_safe_private: bool = Field(
        False, description="Retain Safe Private Option: keep private elements whose VR is numeric (they cannot "
                           "carry names) unless pydicom's private dictionaries name them a date, time, "
                           "stamp, id or number; every other private element is removed")


class DicomIngestConfig(StrictModel):
    """`biomm ingest dicom` / `dicomweb` config (configs/imaging/*.yaml)."""

    intensity: IntensityConfig = IntensityConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    deid: DeidConfig = DeidConfig()
    profile: DicomProfileConfig = Field(default_factory=DicomProfileConfig,
                                        description="PS3.15 profile options applied when de-identification is on")
    workers: int = Field(0, ge=0, description="Decoding processes; 0 = one per CPU core (at most one per series)")
    store_header: bool = Field(True, description="Keep the de-identified header of the first instance as imaging/<uid>.json")
    studies: list[str] = Field(default_factory=list, description="DICOMweb: StudyInstanceUIDs to pull; empty = every study the service lists")
