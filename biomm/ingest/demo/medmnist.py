"""PneumoniaMNIST as a DICOM image cohort: each real 28x28 chest X-ray becomes a CR instance of its
own (pseudo-)patient, so that the image path is trained and measured through the same DICOM ingest
as hospital data; labels and the data set's own train/val/test split go into the cohort.

MedMNIST v2 (Yang et al., Sci Data 2023), CC BY 4.0. The shipped npz is a subsample of the official
split (2,428 / 270 / 468 images, not 4,708 / 524 / 624)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from biomm.store.cohort import Cohort

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
LABEL = "pneumonia"
SPLITS = ("train", "val", "test")


def _instance(pixels: np.ndarray, patient_id: str, key: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.PatientID, ds.PatientName = patient_id, "ANONYMOUS"
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.StudyDate = ds.SeriesDate = "20200101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [1.0, 1.0]
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def write_pneumoniamnist_dicoms(npz: str | Path, out: str | Path, per_split: int | None = None) -> dict:
    """DICOM files plus labels.csv (patient_id, split, label) for every image (or the first `per_split`)."""
    out = Path(out)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    rows = []
    with np.load(npz) as z:
        for split in SPLITS:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
            n = len(images) if per_split is None else min(per_split, len(images))
            for i in range(n):
                pid = f"pneumoniamnist-{split}-{i:04d}"
                path = out / "dicom" / f"{pid}.dcm"
                if not path.exists():
                    _instance(images[i], pid, pid).save_as(path, enforce_file_format=True)
                rows.append({"patient_id": pid, "split": split, "label": int(labels[i]), "file": path.name})
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"images": len(rows), "dicom": str(out / "dicom"), "labels": str(out / "labels.csv")}


def apply_labels_and_splits(cohort: str | Path, labels_csv: str | Path) -> dict:
    """Each image's class as the cohort label `pneumonia`, and the data set's split over the hash split."""
    counts = {s: 0 for s in SPLITS}
    with Cohort(cohort, create=False) as c, open(labels_csv, newline="") as fh:
        known = set(c.subjects())
        with c.transaction():
            for row in csv.DictReader(fh):
                sid = c.deid.subject_id(row["patient_id"])
                if sid not in known:
                    continue  # quarantined at ingest: nothing to label
                c.set_label(sid, LABEL, int(row["label"]), None, source="pneumoniamnist")
                c.set_split(sid, row["split"])
                counts[row["split"]] += 1
    return counts


