"""Demo cohort: a documented, seeded linkage of real parts (Synthea records + real PneumoniaMNIST X-rays).

For every thoracic CR/DX ImagingStudy in the shipped Synthea bundles, write one DICOM instance per
listed instance, carrying that study's UIDs, date, modality and patient (PatientID = FHIR Patient.id).
Its pixels are a real chest X-ray from the PneumoniaMNIST train split, of a class drawn per study with a
fixed seed: pneumonia with probability `pneumonia_probability(record before the study)`, which rises
with a lower-respiratory condition (SNOMED codes below) on record before the study and with age >= 60,
else normal. So the record before the study says something of the class (a risk) and the X-ray says the
rest (the draw itself is in the pixels only): the `xray_pneumonia` task is one where fusing the image
with the record can beat either alone. The pairing is synthetic; each part is real."""
from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

# SNOMED CT lower-respiratory conditions that make the X-ray a pneumonia-class image.
LOWER_RESPIRATORY = {
    "233604007": "Pneumonia",
    "385093006": "Community acquired pneumonia",
    "53084003": "Bacterial pneumonia",
    "75570004": "Viral pneumonia",
    "10509002": "Acute bronchitis",
    "32398004": "Bronchitis",
    "185086009": "Chronic obstructive bronchitis",
}
WINDOW_DAYS = 30
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
PIXEL_MM = 12.5  # a ~350 mm detector sampled at 28 pixels


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def thoracic_studies(bundle: dict) -> tuple[dict, list[dict], list[dict]]:
    """(Patient, thoracic CR/DX ImagingStudies, Conditions) of one Synthea bundle."""
    resources = [e["resource"] for e in bundle.get("entry", [])]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    studies = []
    for r in resources:
        if r["resourceType"] != "ImagingStudy":
            continue
        series = [s for s in r.get("series", []) if s["modality"]["code"] in SOP_CLASS
                  and any(w in s.get("bodySite", {}).get("display", "").lower() for w in ("thora", "chest"))]
        if series:
            studies.append(r | {"series": series})
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    return patient, studies, conditions


def respiratory_evidence(conditions: list[dict], when: datetime) -> list[str]:
    """Lower-respiratory SNOMED codes active within +/-WINDOW_DAYS of `when`."""
    lo, hi = when - timedelta(days=WINDOW_DAYS), when + timedelta(days=WINDOW_DAYS)
    hits = []
    for c in conditions:
        codes = [cd["code"] for cd in c.get("code", {}).get("coding", []) if cd.get("code") in LOWER_RESPIRATORY]
        onset, end = _when(c.get("onsetDateTime")), _when(c.get("abatementDateTime"))
        if codes and onset and onset <= hi and (end is None or end >= lo):
            hits.extend(codes)
    return sorted(set(hits))


BASE_P, PRIOR_RESPIRATORY_P, AGE_P, AGE_YEARS = 0.2, 0.45, 0.25, 60


def prior_respiratory(conditions: list[dict], when: datetime) -> list[str]:
    """Lower-respiratory SNOMED codes with an onset before `when` (what the record before the study holds)."""
    hits = []
    for c in conditions:
        codes = [cd["code"] for cd in c.get("code", {}).get("coding", []) if cd.get("code") in LOWER_RESPIRATORY]
        onset = _when(c.get("onsetDateTime"))
        if codes and onset and onset < when:
            hits.extend(codes)
    return sorted(set(hits))


def pneumonia_probability(patient: dict, conditions: list[dict], when: datetime) -> float:
    """P(pneumonia-class image) of a study at `when`: BASE_P, + PRIOR_RESPIRATORY_P with a lower-respiratory
    condition before the study, + AGE_P at age >= AGE_YEARS (both are in the record before the study)."""
    p = BASE_P
    if prior_respiratory(conditions, when):
        p += PRIOR_RESPIRATORY_P
    birth = _when(patient.get("birthDate"))
    if birth is not None and (when - birth).days >= AGE_YEARS * 365.25:
        p += AGE_P
    return min(p, 0.95)


def _dicom(patient: dict, study: dict, series: dict, instance: dict, pixels: np.ndarray) -> Dataset:
    started = _when(series.get("started") or study.get("started"))
    name = (patient.get("name") or [{}])[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = instance.get("sopClass", {}).get("code") or SOP_CLASS[series["modality"]["code"]]
    meta.MediaStorageSOPInstanceUID = instance["uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, instance["uid"]
    ds.StudyInstanceUID = study["identifier"][0]["value"].removeprefix("urn:oid:")
    ds.SeriesInstanceUID = series["uid"]
    ds.Modality = series["modality"]["code"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = started.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = started.strftime("%H%M%S")
    ds.PatientID = patient["id"]
    ds.PatientName = "^".join([name.get("family", ""), " ".join(name.get("given", []))])
    ds.PatientBirthDate = (patient.get("birthDate") or "").replace("-", "")
    ds.PatientSex = {"male": "M", "female": "F"}.get(patient.get("gender", ""), "O")
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesNumber, ds.InstanceNumber = series.get("number", 1), instance.get("number", 1)
    ds.StudyDescription = "Chest X-ray (biomm demo linkage)"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def make_linked_xrays(synthea_dir: str | Path, npz_path: str | Path, out_dir: str | Path, seed: int = 0) -> dict:
    """Write the linked DICOM files and `linkage.csv` into `out_dir`; returns counts and the manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(npz_path) as z:
        images, labels = z["train_images"], z["train_labels"].reshape(-1)
    pools = {c: np.flatnonzero(labels == c) for c in (0, 1)}
    rng = np.random.default_rng(seed)
    rows = []
    for bundle_path in sorted(Path(synthea_dir).glob("*.json.gz")):
        patient, studies, conditions = thoracic_studies(json.loads(gzip.open(bundle_path).read()))
        for study in sorted(studies, key=lambda s: s["identifier"][0]["value"]):
            when = _when(study.get("started"))
            evidence = prior_respiratory(conditions, when)
            p = pneumonia_probability(patient, conditions, when)
            label = int(rng.random() < p)
            for series in study["series"]:
                for instance in series.get("instance", []):
                    idx = int(rng.choice(pools[label]))
                    ds = _dicom(patient, study, series, instance, images[idx])
                    # Synthea reuses some instance UIDs across studies: name files by study and instance.
                    path = out / f"{ds.StudyInstanceUID}_{ds.SOPInstanceUID}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    rows.append({
                        "study_uid": ds.StudyInstanceUID, "series_uid": ds.SeriesInstanceUID,
                        "sop_instance_uid": ds.SOPInstanceUID, "patient_id": patient["id"], "modality": ds.Modality,
                        "study_date": ds.StudyDate, "label": label, "class": ["normal", "pneumonia"][label],
                        "source_split": "train", "source_index": idx, "evidence": " ".join(evidence),
                        "p_pneumonia": round(p, 3), "file": path.name,
                    })
    manifest = out / "linkage.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["study_uid"])
        writer.writeheader()
        writer.writerows(rows)
    return {"out_dir": str(out), "manifest": str(manifest), "files": len(rows),
            "studies": len({r["study_uid"] for r in rows}), "pneumonia": sum(r["label"] for r in rows),
            "patients": len({r["patient_id"] for r in rows})}

