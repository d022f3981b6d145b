"""DICOM ingest: files, folders and DICOMDIR -> one cached, de-identified record per series.

The parent process owns the manifest (idempotency, subjects, links, quarantine); decoding and
preprocessing of series run in a pool of worker processes (`dicom_series.process_series`).

Each source file is read once in the parent (the bytes are hashed and the routing header parsed from
memory); manifest rows of finished series are written in batches (one transaction and one bulk insert
per table every `MANIFEST_BATCH` series, and at the end), not statement by statement. A crash between
batches leaves cache files without manifest rows: their sources are not marked done, so the next run
redoes them (the cache writes are atomic and overwrite)."""
from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from biomm.config import load_config
from biomm.ingest.base import IngestError, IngestSummary, QuarantineEntry, iter_with_progress, progress
from biomm.ingest.dicom_preprocess import DicomIngestConfig
from biomm.ingest.dicom_reader import Instance, discover, group_series, read_header
from biomm.ingest.dicom_series import SeriesJob, process_series
from biomm.store import splits as split_lib
from biomm.store.atomic import sha256_bytes
from biomm.store.cohort import Cohort

MODALITY = "imaging"
MANIFEST_BATCH = 256  # series per manifest transaction


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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run_jobs(jobs: list[SeriesJob], workers: int, show_progress: bool = False):
    """Yield (job, result) as series finish; a fork pool so workers inherit the imported stack."""
    warm_imports()
    if workers <= 1:
        for job in iter_with_progress(jobs, "DICOM series", disable=not show_progress):
            yield job, process_series(job)
        return
    pool = _pool(workers)
    # Largest series first (bytes on disk as the cost): the long decodes start at once instead of
    # leaving one worker busy at the end while the other idles.
    order = sorted(jobs, key=lambda j: -sum(_size(i.path) for i in j.instances))
    futures = {pool.submit(process_series, job): job for job in order}
    with progress("DICOM series", len(jobs), disable=not show_progress) as bar:
        task = bar.add_task("DICOM series", total=len(jobs))
        for fut in as_completed(futures):  # the parent writes the manifest while workers decode
            yield futures[fut], fut.result()
            bar.advance(task)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class _ManifestBatch:
    """Manifest rows of finished series, written together: subjects (+ splits), records, sources.

    Rows are keyed by their primary key (last write wins, as with per-row INSERT OR REPLACE)."""

    def __init__(self, c: Cohort):
        self.c = c
        self.subjects: dict[str, tuple] = {}
        self.records: dict[str, tuple] = {}
        self.sources: dict[str, tuple] = {}
        self.pending = 0

    def subject(self, subject_id: str, shift_days: int) -> None:
        self.subjects.setdefault(subject_id, (subject_id, "patient", shift_days, "dicom", _now()))

    def record(self, record_id: str, subject_id: str, path: str, checksum: str, source_path: str,
               source_checksum: str, n_items: int, provenance: dict) -> None:
        self.records[record_id] = (record_id, subject_id, MODALITY, path, checksum, source_path, source_checksum,
                                   n_items, json.dumps(provenance, default=str), _now())

    def source(self, checksum: str, label: str, n_records: int, n_quarantined: int) -> None:
        self.sources[checksum] = (checksum, MODALITY, label, n_records, n_quarantined, _now())

    def series_done(self) -> None:
        self.pending += 1
        if self.pending >= MANIFEST_BATCH:
            self.flush()

    def flush(self) -> None:
        if not (self.subjects or self.records or self.sources):
            return
        import pyarrow as pa

        def table(rows, names, types):
            return pa.table([pa.array([r[i] for r in rows], type=t) for i, t in enumerate(types)], names=names)

        s, ts, i64 = pa.string(), pa.timestamp("us"), pa.int64()
        con = self.c.con
        with self.c.transaction():
            if self.subjects:
                rows = list(self.subjects.values())
                con.register("biomm_dicom_subjects", table(rows, ["subject_id", "kind", "shift", "by", "at"],
                                                           [s, s, pa.int32(), s, ts]))
                con.execute("INSERT OR IGNORE INTO subjects SELECT * FROM biomm_dicom_subjects")
                con.unregister("biomm_dicom_subjects")
                con.register("biomm_dicom_splits", pa.table({"subject_id": [r[0] for r in rows],
                                                              "split": [split_lib.split_of(r[0]) for r in rows]}))
                con.execute("INSERT OR IGNORE INTO splits SELECT * FROM biomm_dicom_splits")
                con.unregister("biomm_dicom_splits")
            if self.records:
                con.register("biomm_dicom_records", table(
                    list(self.records.values()),
                    ["record_id", "subject_id", "modality", "path", "checksum", "source_path", "source_checksum",
                     "n_items", "provenance", "created_at"], [s, s, s, s, s, s, s, i64, s, ts]))
                con.execute("INSERT OR REPLACE INTO records SELECT * REPLACE (provenance::JSON AS provenance) "
                            "FROM biomm_dicom_records")
                con.unregister("biomm_dicom_records")
            if self.sources:
                con.register("biomm_dicom_sources", table(
                    list(self.sources.values()),
                    ["source_checksum", "modality", "source_path", "n_records", "n_quarantined", "ingested_at"],
                    [s, s, s, i64, i64, ts]))
                con.execute("INSERT OR REPLACE INTO sources SELECT * FROM biomm_dicom_sources")
                con.unregister("biomm_dicom_sources")
        self.subjects, self.records, self.sources, self.pending = {}, {}, {}, 0


def _done_sources(c: Cohort) -> set[str]:
    return {r[0] for r in c.con.execute("SELECT source_checksum FROM sources WHERE modality = ?", [MODALITY]).fetchall()}


def ingest_files(
    c: Cohort, files: list[tuple[Path, str]], cfg: DicomIngestConfig, *, show_progress: bool = False,
    workers: int | None = None,
) -> IngestSummary:
    """The series pipeline shared by file and DICOMweb ingest. `files` pairs a path with the name to
    label it by (a path or a URL); with de-identification on, stores label by checksum instead."""
    t0 = time.perf_counter()
    s = IngestSummary(modality=MODALITY, cohort=str(c.root), sources_seen=len(files))
    batch = _ManifestBatch(c)

    def quarantine(inst: Instance, err: IngestError, record: str | None = None) -> None:
        c.quarantine(modality=MODALITY, source_path=inst.path, reason=err.reason, record=record, field=err.field)
        batch.source(inst.checksum, inst.label, 0, 1)

    headers = []
    done = _done_sources(c)
    for path, hint in iter_with_progress(files, "DICOM headers", disable=not show_progress):
        data = Path(path).read_bytes()  # read once: hashed and parsed from memory
        checksum = sha256_bytes(data)
        if checksum in done:
            s.sources_skipped_unchanged += 1
            continue
        inst = Instance(Path(path), c.source_label(hint, checksum), checksum)
        try:
            headers.append(read_header(inst, data))
        except IngestError as err:
            quarantine(inst, err)
            s.quarantined += 1
            s.quarantine.append(QuarantineEntry(source=inst.label, field=err.field, reason=err.reason))
        del data

    groups = group_series(headers)
    grouped = {h.instance.checksum for g in groups for h in g.headers}
    duplicates = [h.instance for h in headers if h.instance.checksum not in grouped]
    s.items_skipped_duplicate += len(duplicates)
    for inst in duplicates:
        batch.source(inst.checksum, inst.label, 0, 0)

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

    created: set[str] = set()
    try:
        for job, res in run_jobs(jobs, workers or _pool_size(cfg, len(jobs)), show_progress):
            if not res["ok"]:
                err = IngestError(**res["error"])
                for inst in job.instances:
                    quarantine(inst, err, record=job.record_uid)
                s.quarantined += 1
                s.quarantine.append(QuarantineEntry(source=err.source, record=job.record_uid, field=err.field, reason=err.reason))
                batch.series_done()
                continue
            linked_by, new = links[job.record_uid]
            prov = res["provenance"] | {"linked_by": linked_by, "subject_created": new}
            if new and job.subject_id not in created:
                created.add(job.subject_id)
                batch.subject(job.subject_id, job.shift_days)
                s.subjects_added += 1
            batch.record(job.record_uid, job.subject_id, res["path"], res["checksum"],
                         prov["sources"][0]["source"], job.instances[0].checksum, res["n_items"], prov)
            for inst in job.instances:
                batch.source(inst.checksum, inst.label, 1, 0)
            batch.series_done()
            s.records_written += 1
            s.items_written += res["n_items"]
            if prov["burned_in_annotation"]:
                s.warnings.append(f"series {job.record_uid}: BurnedInAnnotation=YES, pixels may show identifying text")
    finally:
        batch.flush()  # what finished is kept even when a later series aborts the run
    s.seconds = round(time.perf_counter() - t0, 3)
    return s
