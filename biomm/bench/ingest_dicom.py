"""`biomm bench ingest-dicom`: series/s from DICOM files to a cached, preprocessed tensor.

biomm (`ingest_dicom` into a fresh cohort: checksums, de-identification, manifest, npz cache) against two
peers, same run, same files, outputs compared:
- plain MONAI: `LoadImaged(reader="PydicomReader")` + the same transforms + `np.savez_compressed`;
- SimpleITK: `ImageSeriesReader` with GDCM's slice order and geometry (`ReadImage` for a single file),
  the array and LPS geometry turned into MONAI's (C, X, Y[, Z]) + RAS affine, then the same transforms
  and `np.savez_compressed`."""
from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data

from biomm.ingest.imaging.config import DicomIngestConfig
from biomm.ingest.imaging.geometry import LPS_TO_RAS
from biomm.ingest.imaging.transforms import KEY, SeriesTransforms, build_transforms
from biomm.store.image_cache import load_cached

# Grayscale MONOCHROME2 single-frame files of pydicom-data that both readers interpret alike
# (MONAI applies no MONOCHROME1 inversion, palette or modality LUT sequence, so those are left out).
PYDICOM_DATA_FILES = [
    "693_J2KR.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "JPEG-LL.dcm", "JPEG2000_UNC.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_J2KI.dcm", "MR2_J2KR.dcm",
    "MR2_UNCI.dcm", "MR2_UNCR.dcm", "explicit_VR-UN.dcm",
]
DICOMDIR_SERIES = ["98892001/CT5N"]


def _rss_mb() -> dict:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mb_main": round(self_kb / 1024, 1), "peak_rss_mb_worker": round(child_kb / 1024, 1)}


def prepare(folder: Path, copies: int = 1) -> list[Path]:
    """One folder per series: pydicom-data files (given unique series UIDs, since several share one) and
    the dicomdirtests CT series, `copies` times (each copy with new series and instance UIDs, so no file is a
    duplicate of another: a larger workload where per-run costs weigh less). Returns the series folders."""
    data = Path(importlib.util.find_spec("data_store").origin).parent / "data"
    series = []
    for i, name in enumerate(PYDICOM_DATA_FILES):
        ds = pydicom.dcmread(data / name)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[name, "series"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[name, "instance"])
        out = folder / f"s{i:02d}"
        out.mkdir(parents=True)
        ds.save_as(out / "img.dcm")
        series.append(out)
    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    for rel in DICOMDIR_SERIES:
        out = folder / rel.replace("/", "_")
        shutil.copytree(root / rel, out)
        series.append(out)
    base = list(series)
    for k in range(1, copies):
        for src in base:
            out = folder / f"{src.name}_copy{k}"
            out.mkdir()
            for path in sorted(src.iterdir()):
                ds = pydicom.dcmread(path)
                ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[src.name, str(k), "series"])
                ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[src.name, path.name, str(k), "instance"])
                ds.save_as(out / path.name)
            series.append(out)
    return series


def run_monai(series: list[Path], cfg: DicomIngestConfig, out: Path) -> dict[str, np.ndarray]:
    """The plain MONAI peer: LoadImaged(PydicomReader) + EnsureChannelFirstd + the same transforms."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    load = LoadImaged(keys=KEY, reader="PydicomReader", image_only=True)
    channel = EnsureChannelFirstd(keys=KEY)
    results = {}
    for folder in series:
        files = sorted(str(f) for f in folder.iterdir())
        img = channel(load({KEY: str(folder) if len(files) > 1 else files[0]}))[KEY]  # a folder is a series
        compose, _ = build_transforms(cfg, img.ndim - 1)
        arr = compose({KEY: img})[KEY]
        image = arr.detach().cpu().numpy().astype(cfg.preprocess.cache_dtype)
        with open(out / f"{folder.name}.npz", "wb") as fh:
            np.savez_compressed(fh, image=image, affine=np.asarray(arr.affine))
        results[folder.name] = image
    return results


def sitk_read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A series folder through SimpleITK (GDCM): channel-first (C, X, Y[, Z]) float32 array and its 4x4 RAS affine."""
    import SimpleITK as sitk

    files = sorted(str(f) for f in folder.iterdir())
    if len(files) > 1:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(files[0])
    arr = sitk.GetArrayFromImage(img).astype(np.float32)  # (Z, Y, X[, C])
    if arr.ndim == 3:
        arr = arr[..., None]
    arr = np.transpose(arr, (3, 2, 1, 0))  # (C, X, Y, Z)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    if len(files) == 1 and arr.shape[-1] == 1:
        arr = arr[..., 0]  # a single image is 2D, as biomm and MONAI read it
    return arr, LPS_TO_RAS @ lps


def run_sitk(series: list[Path], cfg: DicomIngestConfig, out: Path) -> dict[str, np.ndarray]:
    """The SimpleITK peer: ImageSeriesReader, then the same transforms and cache format as biomm."""
    transforms = SeriesTransforms(cfg)
    results = {}
    for folder in series:
        arr, affine = sitk_read(folder)
        image, out_affine, _ = transforms(arr, affine)
        image = image.astype(cfg.preprocess.cache_dtype)
        with open(out / f"{folder.name}.npz", "wb") as fh:
            np.savez_compressed(fh, image=image, affine=out_affine)
        results[folder.name] = image
    return results


def _diffs(peer: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> list[float]:
    """Max absolute difference per series (inf where the shapes differ)."""
    return [float(np.max(np.abs(a.astype(np.float32) - ours[name].astype(np.float32)))) if a.shape == ours[name].shape
            else float("inf") for name, a in peer.items()]


def run_biomm(series: list[Path], cfg: DicomIngestConfig, cohort: Path) -> int:
    """biomm's ingest (the timed part); returns the records written."""
    from biomm.ingest.imaging.dicom import ingest

    summary = ingest(series, cohort, cfg, progress=False)
    if summary.quarantined:
        raise RuntimeError(f"bench input quarantined: {[q.reason for q in summary.quarantine]}")
    return summary.records_written


def read_biomm(series: list[Path], cohort: Path) -> dict[str, np.ndarray]:
    """biomm's cached images by series folder, read back after the timing to compare with the peer's."""
    from biomm.store.cohort import Cohort

    out = {}
    with Cohort(cohort) as c:
        paths = {r["record_id"]: r["path"] for r in c.records("imaging")}
        for folder in series:
            uid = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
            out[folder.name] = load_cached(c.path(paths[c.deid.uid(uid)]))["image"]
    return out


def bench(repeats: int = 3, workers: int = 0, copies: int = 1) -> dict:
    """The DICOM ingest benchmark: series/s of biomm against plain MONAI and SimpleITK on the same series (the
    13 of `prepare`, `copies` times), as one dict."""
    cfg = DicomIngestConfig.model_validate({"workers": workers})
    n_workers = workers or (os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="biomm-bench-dicom-"))
    try:
        series = prepare(tmp / "src", copies)
        t_monai, t_biomm, t_biomm1, t_sitk = [], [], [], []
        for r in range(repeats):
            out = tmp / f"monai{r}"
            out.mkdir()
            t0 = time.perf_counter()
            monai_out = run_monai(series, cfg, out)
            t_monai.append(time.perf_counter() - t0)
            out = tmp / f"sitk{r}"
            out.mkdir()
            t0 = time.perf_counter()
            sitk_out = run_sitk(series, cfg, out)
            t_sitk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_biomm(series, cfg, tmp / f"cohort{r}")
            t_biomm.append(time.perf_counter() - t0)
            biomm_out = read_biomm(series, tmp / f"cohort{r}")
            t0 = time.perf_counter()
            run_biomm(series, cfg.model_copy(update={"workers": 1}), tmp / f"cohort1_{r}")
            t_biomm1.append(time.perf_counter() - t0)
        diffs = _diffs(monai_out, biomm_out)
        sitk_diffs = _diffs(sitk_out, biomm_out)
        n_series = len(series)
        best = lambda ts: min(ts)  # noqa: E731  (best of repeats: least disturbed by the machine)
        return {
            "benchmark": "ingest-dicom",
            "series": n_series,
            "copies": copies,
            "instances": sum(len(list(s.iterdir())) for s in series),
            "repeats": repeats,
            "biomm_series_per_s": round(n_series / best(t_biomm), 2),
            "biomm_1proc_series_per_s": round(n_series / best(t_biomm1), 2),
            "monai_series_per_s": round(n_series / best(t_monai), 2),
            "ratio_vs_monai": round(best(t_monai) / best(t_biomm), 3),
            "ratio_vs_monai_1proc": round(best(t_monai) / best(t_biomm1), 3),
            "sitk_series_per_s": round(n_series / best(t_sitk), 2),
            "ratio_vs_sitk": round(best(t_sitk) / best(t_biomm), 3),
            "ratio_vs_sitk_1proc": round(best(t_sitk) / best(t_biomm1), 3),
            "sitk_outputs_agree": sum(d <= 2e-3 for d in sitk_diffs),
            "sitk_max_abs_diff": round(max(sitk_diffs), 6) if sitk_diffs else None,
            "decoding_processes": min(n_workers, n_series),
            "outputs_agree": sum(d <= 2e-3 for d in diffs),
            "outputs_compared": len(diffs),
            "max_abs_diff": round(max(diffs), 6) if diffs else None,
            **_rss_mb(),
            "note": "biomm time includes sha256, header de-identification, header JSON and manifest writes; peer "
                    "writes only npz. biomm's outputs are read back from its cohort for the comparison after the "
                    "timing (the peer hands its arrays back in memory)",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
