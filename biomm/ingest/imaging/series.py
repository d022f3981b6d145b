"""One series -> one cached record: read, check, order, decode, de-identify the header, transform, write.

`process_series` runs in a worker process; it returns plain dicts (picklable) and never touches the
manifest, which the parent process owns."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from biomm.ingest.base import IngestError
from biomm.ingest.imaging.deid import burned_in, deidentify, header_json
from biomm.ingest.imaging.geometry import GeometryError, Plane, series_geometry
from biomm.ingest.imaging.intensity import check_decodable, decode
from biomm.ingest.imaging.config import DicomIngestConfig
from biomm.ingest.imaging.reader import Instance
from biomm.ingest.imaging.transforms import SeriesTransforms
from biomm.store.atomic import atomic_write_bytes
from biomm.store.deid import Deidentifier
from biomm.store.image_cache import spacing_of, write_cache


@dataclass
class SeriesJob:
    """One series to process in a worker: its instances, its subject and what the run's config asks."""

    series_uid: str
    record_uid: str          # remapped SeriesInstanceUID: record id and cache file name
    instances: list[Instance]
    subject_id: str
    shift_days: int
    deid: Deidentifier
    cfg: DicomIngestConfig
    imaging_dir: Path
    transforms: SeriesTransforms


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and np.all(np.isfinite(out)) else None


def _spacing(ds) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if key in ds and (v := _floats(ds[key].value, 2)):
            return v
    return None


def _plane(ds) -> Plane:
    thick = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return Plane(_floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6),
                 _spacing(ds), float(thick) if thick else None)


def _frame_planes(ds) -> list[Plane]:
    """Per-frame geometry of a multi-frame object: functional groups, RTDOSE offsets, or none (cine)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per and len(per) == n:
        planes = []
        for item in per:
            def pick(seq):
                for src in (item, shared):
                    if src is not None and src.get(seq):
                        return src.get(seq)[0]
                return None
            pos, ori, meas = pick("PlanePositionSequence"), pick("PlaneOrientationSequence"), pick("PixelMeasuresSequence")
            thick = meas.get("SpacingBetweenSlices") or meas.get("SliceThickness") if meas is not None else None
            planes.append(Plane(
                _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None,
                _floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else None,
                _floats(meas.get("PixelSpacing"), 2) if meas is not None else _spacing(ds),
                float(thick) if thick else None))
        return planes
    base = _plane(ds)
    offsets = ds.get("GridFrameOffsetVector")
    if base.position and base.orientation and offsets is not None and len(offsets) == n:
        normal = np.cross(base.orientation[:3], base.orientation[3:])
        return [Plane(tuple(np.add(base.position, normal * float(o))), base.orientation, base.pixel_spacing)
                for o in offsets]
    return [Plane(None, None, base.pixel_spacing, base.thickness) for _ in range(n)]


def _segment_channels(ds, frames: np.ndarray, planes: list[Plane]) -> tuple[np.ndarray, list[Plane]]:
    """SEG: frames of several segments share positions; lay them out as one channel per segment."""
    per = ds.PerFrameFunctionalGroupsSequence
    segs = [int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for item in per]
    seg_ids = sorted(set(segs))
    keys = [p.position for p in planes]
    unique = list(dict.fromkeys(keys))
    out = np.zeros((len(unique),) + frames.shape[1:3] + (len(seg_ids),), dtype=np.float32)
    for f, (seg, key) in enumerate(zip(segs, keys)):
        out[unique.index(key), ..., seg_ids.index(seg)] = frames[f, ..., 0]
    return out, [planes[keys.index(k)] for k in unique]


def _read(inst: Instance):
    try:
        return pydicom.dcmread(inst.path)
    except Exception as exc:
        raise IngestError(inst.label, f"unreadable DICOM: {type(exc).__name__}") from None


def load_series(instances: list[Instance], *, voi: bool = False):
    """Decode a series into (channel-first array in (C, X, Y[, Z]), RAS affine, kind, first dataset)."""
    datasets = [_read(i) for i in instances]
    for ds, inst in zip(datasets, instances):
        check_decodable(ds, inst.label)
    label = instances[0].label
    record = datasets[0].get("SeriesInstanceUID", "")
    frames0 = int(datasets[0].get("NumberOfFrames", 1) or 1)
    try:
        if len(datasets) == 1 and frames0 > 1:
            kind, ds = "multiframe", datasets[0]
            arr = decode(ds, label, voi=voi)
            planes = _frame_planes(ds)
            if str(ds.get("Modality", "")) == "SEG" and ds.get("PerFrameFunctionalGroupsSequence"):
                arr, planes = _segment_channels(ds, arr, planes)
            geo = series_geometry(planes)
            arr = arr[geo.order]
        elif len(datasets) == 1:
            kind, ds = "image", datasets[0]
            arr = decode(ds, label, voi=voi)
            geo = series_geometry([_plane(ds)])
        else:
            kind = "volume"
            if any(int(d.get("NumberOfFrames", 1) or 1) > 1 for d in datasets):
                raise GeometryError("inconsistent series: mixes multi-frame and single-frame instances", "NumberOfFrames")
            sizes = {(int(d.Rows), int(d.Columns), int(d.get("SamplesPerPixel", 1))) for d in datasets}
            if len(sizes) > 1:
                raise GeometryError(f"inconsistent series: image sizes differ {sorted(sizes)}", "Rows")
            geo = series_geometry([_plane(d) for d in datasets])
            ordered = [(datasets[i], instances[i]) for i in geo.order]
            arr = np.concatenate([decode(d, inst.label, voi=voi) for d, inst in ordered], axis=0)
            ds = ordered[0][0]
    except GeometryError as exc:
        raise IngestError(label, exc.reason, record=str(record), field=exc.field) from None
    # (frames, rows, columns, samples) -> (samples, columns, rows[, frames]): MONAI's (C, i, j[, k]).
    arr = np.transpose(arr, (3, 2, 1, 0))
    if kind == "image":
        arr = arr[..., 0]
    return arr, geo, kind, ds


def process_series(job: SeriesJob) -> dict[str, Any]:
    """Run one series; {'ok': True, ...record fields} or {'ok': False, 'error': {...}} (never raises IngestError)."""
    try:
        return _process(job)
    except IngestError as exc:
        return {"ok": False, "error": {"source": exc.source, "reason": exc.reason, "record": exc.record, "field": exc.field}}
    except Exception as exc:  # malformed input the checks above did not foresee: quarantine, never abort the run
        source = job.instances[0].label if len(job.instances) == 1 else f"{len(job.instances)} instances"
        return {"ok": False, "error": {"source": source, "reason": f"cannot read series: {type(exc).__name__}: {str(exc)[:160]}",
                                       "record": None, "field": None}}


def _process(job: SeriesJob) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    cfg = job.cfg
    arr, geo, kind, ds = load_series(job.instances, voi=cfg.intensity.voi)
    original_shape = list(arr.shape)
    rank = arr.ndim - 1
    image, affine, transforms = job.transforms(arr, geo.affine)
    flags = burned_in(ds)
    info = {
        "dicom_modality": str(ds.get("Modality", "OT")),
        "body_part": str(ds.get("BodyPartExamined", "") or "").upper() or None,
        "sop_class": str(ds.get("SOPClassUID", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""),
    }
    deidentify(ds, job.deid, job.subject_id, job.shift_days, cfg.profile)
    study_date = str(ds.get("StudyDate", "") or "") or None
    cache = job.imaging_dir / f"{job.record_uid}.npz"
    cache_sha256 = write_cache(cache, image, affine, geo.affine, list(geo.spacing[:rank]), cfg.preprocess.cache_dtype)
    header_rel = None
    if cfg.store_header:
        header = job.imaging_dir / f"{job.record_uid}.json"
        keep_private = cfg.profile.retain_safe_private and job.deid.enabled  # Retain Safe Private option
        atomic_write_bytes(header, json.dumps(header_json(ds, keep_private), sort_keys=True).encode())
        header_rel = f"imaging/{header.name}"
    return {
        "ok": True,
        "path": f"imaging/{cache.name}",
        "checksum": cache_sha256,
        "n_items": len(job.instances),
        "provenance": {
            "kind": kind,
            **info,
            "study_date": study_date,
            "series_uid": job.record_uid,
            "study_uid": str(ds.get("StudyInstanceUID", "")),
            "shape": list(image.shape),
            "spacing": spacing_of(affine, rank),
            "affine": np.round(affine, 6).tolist(),
            "original_shape": original_shape,
            "original_spacing": [float(v) for v in geo.spacing[:rank]],
            "original_affine": np.round(geo.affine, 6).tolist(),
            "patient_frame": geo.has_patient_frame,
            "transforms": transforms,
            "intensity": cfg.intensity.model_dump(),
            "dtype": cfg.preprocess.cache_dtype,
            "burned_in_annotation": flags,
            "deidentified": job.deid.enabled,
            "header": header_rel,
            "sources": [{"source": i.label, "sha256": i.checksum} for i in job.instances],
        },
    }
