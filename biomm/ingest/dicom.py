"""DICOM ingest: files, folders and DICOMDIR -> one cached, de-identified record per series.

The parent process owns the manifest (idempotency, subjects, links, quarantine); decoding and
preprocessing of series run in a pool of worker processes (`dicom_series.process_series`)."""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable

from biomm.config import load_config
from biomm.ingest.base import IngestError, IngestSummary, QuarantineEntry, iter_with_progress, progress
from biomm.ingest.dicom_preprocess import DicomIngestConfig
from biomm.ingest.dicom_reader import Instance, discover, group_series, read_header
from biomm.ingest.dicom_series import SeriesJob, process_series
from biomm.store.atomic import sha256_file
from biomm.store.cohort import Cohort

MODALITY = "imaging"


def resolve_config(config: DicomIngestConfig | str | Path | dict | None, overrides: list[str] | None = None) -> DicomIngestConfig:
    if isinstance(config, DicomIngestConfig):
        return config if not overrides else load_config(DicomIngestConfig, config.model_dump(), overrides)
    return load_config(DicomIngestConfig, config, overrides)


def open_cohort(cohort: str | Path, cfg: DicomIngestConfig, deid: bool | None, deid_key: str | None) -> Cohort:
    """`deid=False` (or `deid.enabled: false`) asks for an identified cohort; None keeps the cohort's setting."""
    flag = False if (deid is False or not cfg.deid.enabled) else None
    return Cohort(cohort, deid=flag, deid_key=deid_key or cfg.deid.key, max_shift_days=cfg.deid.max_date_shift_days)


def ingest_dicom(
    sources: Iterable[str | Path],
    cohort: str | Path,
    config: DicomIngestConfig | str | Path | dict | None = None,
    overrides: list[str] | None = None,
    *,
    deid: bool | None = None,
    deid_key: str | None = None,
    show_progress: bool = False,
) -> IngestSummary:
    """Ingest DICOM files/folders/DICOMDIRs into the cohort at `cohort`; returns the run summary."""
    cfg = resolve_config(config, overrides)
    files, dicomdirs = discover(list(sources))
    with open_cohort(cohort, cfg, deid, deid_key) as c:
        summary = ingest_files(c, [(f, str(f)) for f in files], cfg, show_progress=show_progress)
        summary.items_ignored += len(dicomdirs)
        return summary


def _link(c: Cohort, study_uid: str, patient_id: str) -> tuple[str, int, str | None, bool]:
    """(subject_id, date shift, linked_by, new_subject): ImagingStudy first, then PatientID, else a new subject."""
    if study_uid:
        candidates = [c.deid.uid(study_uid), c.deid.uid(f"urn:oid:{study_uid}")]
        row = c.con.execute(
            "SELECT subject_id FROM imaging_studies WHERE study_uid IN (?, ?) AND subject_id IS NOT NULL LIMIT 1",
            candidates).fetchone()
        if row and (shift := c.subject_shift(row[0])) is not None:
            return row[0], shift, "imaging_study", False
    source_id = patient_id or f"dicom-study:{study_uid}"
    sid = c.deid.subject_id(source_id)
    shift = c.subject_shift(sid)
    if shift is not None:
        return sid, shift, ("patient_id" if patient_id else None), False
    return sid, c.deid.date_shift_days(source_id), None, True


def _pool_size(cfg: DicomIngestConfig, n_jobs: int) -> int:
    want = cfg.workers or (os.cpu_count() or 1)
    return max(1, min(want, n_jobs))


def warm_imports() -> None:
    """Import MONAI/torch in the parent (about 10 s, mostly `import monai`) so forked workers inherit them."""
    import monai.transforms  # noqa: F401
    from monai.data import MetaTensor  # noqa: F401


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One fork pool per size, kept for the process's life: repeated ingests (pipelines, DICOMweb, tests)
    do not pay for forking a large parent again. Workers only receive picklable jobs."""
    pool = _POOLS.get(workers)
    if pool is None or getattr(pool, "_broken", False):
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return pool


def run_jobs(jobs: list[SeriesJob], workers: int, show_progress: bool = False):
    """Yield (job, result) as series finish; a fork pool so workers inherit the imported stack."""
    warm_imports()
    if workers <= 1:
        for job in iter_with_progress(jobs, "DICOM series", disable=not show_progress):
            yield job, process_series(job)
        return
    pool = _pool(workers)
    futures = {pool.submit(process_series, job): job for job in jobs}
    with progress("DICOM series", len(jobs), disable=not show_progress) as bar:
        task = bar.add_task("DICOM series", total=len(jobs))
        for fut in as_completed(futures):  # the parent writes the manifest while workers decode
            yield futures[fut], fut.result()
            bar.advance(task)


def ingest_files(
    c: Cohort, files: list[tuple[Path, str]], cfg: DicomIngestConfig, *, show_progress: bool = False,
    workers: int | None = None,
) -> IngestSummary:
    """The series pipeline shared by file and DICOMweb ingest. `files` pairs a path with the name to
    label it by (a path or a URL); with de-identification on, stores label by checksum instead."""
    t0 = time.perf_counter()
    s = IngestSummary(modality=MODALITY, cohort=str(c.root), sources_seen=len(files))

    def quarantine(inst: Instance, err: IngestError, record: str | None = None) -> None:
        c.quarantine(modality=MODALITY, source_path=inst.path, reason=err.reason, record=record, field=err.field)
        c.mark_source(inst.checksum, MODALITY, inst.label, 0, 1)

    headers = []
    for path, hint in iter_with_progress(files, "DICOM headers", disable=not show_progress):
        checksum = sha256_file(path)
        if c.source_done(checksum, MODALITY):
            s.sources_skipped_unchanged += 1
            continue
        inst = Instance(Path(path), c.source_label(hint, checksum), checksum)
        try:
            headers.append(read_header(inst))
        except IngestError as err:
            quarantine(inst, err)
            s.quarantined += 1
            s.quarantine.append(QuarantineEntry(source=inst.label, field=err.field, reason=err.reason))

    groups = group_series(headers)
    grouped = {h.instance.checksum for g in groups for h in g.headers}
    duplicates = [h.instance for h in headers if h.instance.checksum not in grouped]
    s.items_skipped_duplicate += len(duplicates)
    for inst in duplicates:
        c.mark_source(inst.checksum, MODALITY, inst.label, 0, 0)

    jobs, links = [], {}
    imaging_dir = c.path("imaging")
    imaging_dir.mkdir(parents=True, exist_ok=True)
    reused = {uid for uid in (g.series_uid for g in groups) if sum(o.series_uid == uid for o in groups) > 1}
    for g in groups:
        sid, shift, linked_by, new = _link(c, g.study_uid, g.patient_id)
        # A series UID reused across studies (invalid DICOM, but seen in generated data) gets a record id per study.
        record_uid = c.deid.uid(f"{g.study_uid}|{g.series_uid}" if g.series_uid in reused else g.series_uid)
        job = SeriesJob(g.series_uid, record_uid, g.instances, sid, shift, c.deid, cfg, imaging_dir)
        jobs.append(job)
        links[job.record_uid] = (linked_by, new)

    for job, res in run_jobs(jobs, workers or _pool_size(cfg, len(jobs)), show_progress):
        if not res["ok"]:
            err = IngestError(**res["error"])
            for inst in job.instances:
                quarantine(inst, err, record=job.record_uid)
            s.quarantined += 1
            s.quarantine.append(QuarantineEntry(source=err.source, record=job.record_uid, field=err.field, reason=err.reason))
            continue
        linked_by, new = links[job.record_uid]
        prov = res["provenance"] | {"linked_by": linked_by, "subject_created": new}
        with c.transaction():
            if new and c.subject_shift(job.subject_id) is None:
                c.ensure_subject(job.subject_id, "patient", job.shift_days, "dicom")
                s.subjects_added += 1
            c.add_record(job.record_uid, job.subject_id, MODALITY, res["path"], res["checksum"],
                         prov["sources"][0]["source"], job.instances[0].checksum, res["n_items"], prov)
            for inst in job.instances:
                c.mark_source(inst.checksum, MODALITY, inst.label, 1, 0)
        s.records_written += 1
        s.items_written += res["n_items"]
        if prov["burned_in_annotation"]:
            s.warnings.append(f"series {job.record_uid}: BurnedInAnnotation=YES, pixels may show identifying text")
    s.seconds = round(time.perf_counter() - t0, 3)
    return s
