"""Helpers for the DICOM tests: where pydicom's test files are, and small crafted series."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.uid import generate_uid

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"
_spec = importlib.util.find_spec("data_store")  # pydicom-data installs its files as `data_store`
PYDICOM_DATA = Path(_spec.origin).parent / "data" if _spec else None

FAST = {"workers": 1, "preprocess": {"spatial_size_2d": [32, 32], "spatial_size_3d": [16, 16, 8]}}


def dicom_file(name: str) -> Path:
    """A file from pydicom's test set or pydicom-data (never `get_testdata_files('*')`, which goes online)."""
    for folder in (TEST_FILES, PYDICOM_DATA):
        if folder is not None and (folder / name).exists():
            return folder / name
    return Path(pydicom.data.get_testdata_file(name))


def copy_as_new_series(src: Path, dst: Path, **changes) -> Path:
    """A copy of `src` with fresh study/series/instance UIDs (several test files share UIDs) and edits."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = changes.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = changes.pop("SeriesInstanceUID", generate_uid())
    ds.SOPInstanceUID = generate_uid()
    for key, value in changes.items():
        setattr(ds, key, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def make_series(folder: Path, n: int = 5, *, spacing: float = 2.5, orientation=(1, 0, 0, 0, 1, 0),
                positions=None, shuffle: bool = True, patient=("Doe^Jane", "PID-12345", "19700101")) -> Path:
    """A CT series from CT_small's pixels: `n` slices along the normal of `orientation`, with
    InstanceNumbers in shuffled order so that sorting must use positions."""
    src = pydicom.dcmread(dicom_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    r, c = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(r, c)
    origin = np.array([-40.0, 12.5, 100.0])
    if positions is None:
        positions = [origin + normal * spacing * k for k in range(n)]
    order = np.random.default_rng(0).permutation(len(positions)) if shuffle else np.arange(len(positions))
    folder.mkdir(parents=True, exist_ok=True)
    for k, pos in enumerate(positions):
        ds = src.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [float(v) for v in (orientation if len(orientation) == 6 else orientation)]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.InstanceNumber = int(order[k]) + 1
        ds.SliceThickness = spacing
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient
        arr = ds.pixel_array.copy()
        arr[0, 0] = k  # a slice marker
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm")
    return folder


def stored_text(cohort: Path) -> str:
    """Everything the cohort stores outside quarantine/, as text (npz arrays as bytes, decoded loosely)."""
    chunks = []
    for f in cohort.rglob("*"):
        if f.is_file() and "quarantine" not in f.relative_to(cohort).parts:
            chunks.append(f.read_bytes().decode("latin-1"))
            if f.suffix == ".npz":
                with np.load(f) as z:
                    chunks.extend(json.dumps(z[k].tolist()) if z[k].size < 64 else "" for k in z.files)
    return "\n".join(chunks)
