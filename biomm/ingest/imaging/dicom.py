"""DICOM ingest: files, folders and DICOMDIR -> one cached, de-identified record per series.

The parent process owns the manifest (idempotency, subjects, links, quarantine); decoding and
preprocessing of series run in a pool of worker processes (`series.process_series`) that one
`ImagingIngest` run owns and closes.

Each source file is read once in the parent (the bytes are hashed and the routing header parsed from
memory, in the per-source loop); manifest rows of finished series are written in batches (one
transaction and one bulk insert per table every `MANIFEST_BATCH` series, and at the end), not
statement by statement. A crash between batches leaves cache files without manifest rows: their
sources are not marked done, so the next run redoes them (the cache writes are atomic and overwrite)."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Iterator

from biomm.ingest.base import (IngestError, IngestSummary, QuarantineEntry, Source, for_each_source,
                               iter_with_progress, open_cohort, progress, reader_config)
from biomm.ingest.imaging.config import DicomIngestConfig
from biomm.ingest.imaging.reader import Header, Instance, SeriesGroup, discover, group_series, read_header
from biomm.ingest.imaging.series import SeriesJob, process_series
from biomm.ingest.imaging.transforms import SeriesTransforms
from biomm.store import imaging as imaging_store
from biomm.store.cohort import Cohort, Record

MODALITY = "imaging"
MANIFEST_BATCH = 256  # series per manifest transaction


def ingest(
    sources: Iterable[str | Path],
    cohort: str | Path | Cohort,
    config: DicomIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest DICOM files, folders and DICOMDIRs into a cohort (a folder, created when missing, or an open
    Cohort); `config` is a DicomIngestConfig, a dict, a YAML path or None for the defaults."""
    cfg = reader_config(DicomIngestConfig, config)
    files, dicomdirs = discover(list(sources))
    with open_cohort(cohort, cfg.deid, keep_setting=True) as c, ImagingIngest(c, cfg, progress=progress) as run:
        summary = run.run(files)
    summary.items_ignored += len(dicomdirs)
    return summary


def warm_imports() -> None:
    """Import MONAI/torch in the parent (about 10 s, mostly `import monai`) so forked workers inherit them."""
    import monai.transforms  # noqa: F401
    from monai.data import MetaTensor  # noqa: F401


def _links(c: Cohort, groups: list[SeriesGroup]) -> list[tuple[str, int, str | None, bool]]:
    """Per series group, (subject_id, date shift, linked_by, new_subject): ImagingStudy first, then PatientID,
    else a new subject. Two manifest queries for all groups (one per series took ~2 ms each)."""
    keys = {g.study_uid: [c.deid.uid(g.study_uid), c.deid.uid(f"urn:oid:{g.study_uid}")] for g in groups if g.study_uid}
    by_study = imaging_store.study_subjects(c, [u for uids in keys.values() for u in uids])
    source_ids = {g.patient_id or f"dicom-study:{g.study_uid}" for g in groups}
    pseudonyms = {src: c.deid.subject_id(src) for src in source_ids}
    shifts = c.subject_shifts([*by_study.values(), *pseudonyms.values()])
    out = []
    for g in groups:
        sid = next((by_study[u] for u in keys.get(g.study_uid, []) if u in by_study), None)
        if sid is not None and sid in shifts:
            out.append((sid, shifts[sid], "imaging_study", False))
            continue
        source_id = g.patient_id or f"dicom-study:{g.study_uid}"
        sid = pseudonyms[source_id]
        if sid in shifts:
            out.append((sid, shifts[sid], "patient_id" if g.patient_id else None, False))
        else:
            out.append((sid, c.deid.date_shift_days(source_id), None, True))
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _ManifestBatch:
    """Manifest rows of finished series, written together: subjects (+ splits), records, sources.

    Rows are keyed by their primary key (last write wins, as with per-row INSERT OR REPLACE)."""

    def __init__(self, c: Cohort):
        self.c = c
        self.subjects: dict[str, int] = {}
        self.records: dict[str, Record] = {}
        self.sources: dict[str, tuple[str, str, int, int]] = {}
        self.pending = 0

    def subject(self, subject_id: str, shift_days: int) -> None:
        self.subjects.setdefault(subject_id, shift_days)

    def record(self, record: Record) -> None:
        self.records[record.record_id] = record

    def source(self, checksum: str, label: str, n_records: int, n_quarantined: int) -> None:
        self.sources[checksum] = (checksum, label, n_records, n_quarantined)

    def series_done(self) -> None:
        self.pending += 1
        if self.pending >= MANIFEST_BATCH:
            self.flush()

    def flush(self) -> None:
        if not (self.subjects or self.records or self.sources):
            return
        with self.c.transaction():
            self.c.add_subjects(self.subjects.items(), kind="patient", created_by="dicom")
            self.c.add_records(self.records.values())
            self.c.mark_sources(MODALITY, self.sources.values())
        self.subjects, self.records, self.sources, self.pending = {}, {}, {}, 0


class ImagingIngest:
    """One DICOM ingest run into one cohort. It owns what its series share: the transforms (built once)
    and the pool of worker processes that decode them; `close()` (or leaving the `with` block) ends the pool."""

    def __init__(self, cohort: Cohort, config: DicomIngestConfig, *, progress: bool = True):
        self.cohort = cohort
        self.config = config
        self.progress = progress
        self.transforms: SeriesTransforms | None = None
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "ImagingIngest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker pool down (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _workers(self, n_jobs: int) -> int:
        want = self.config.workers or (os.cpu_count() or 1)
        return max(1, min(want, n_jobs))

    def _run_jobs(self, jobs: list[SeriesJob]) -> Iterator[tuple[SeriesJob, dict]]:
        """(job, result) as series finish; a fork pool so workers inherit the imported stack."""
        workers = self._workers(len(jobs))
        if workers <= 1:
            for job in iter_with_progress(jobs, "DICOM series", disable=not self.progress):
                yield job, process_series(job)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))
        # Largest series first (bytes on disk as the cost): the long decodes start at once instead of
        # leaving one worker busy at the end while the other idles.
        order = sorted(jobs, key=lambda j: -sum(_size(i.path) for i in j.instances))
        futures = {self._pool.submit(process_series, job): job for job in order}
        with progress("DICOM series", len(jobs), disable=not self.progress) as bar:
            task = bar.add_task("DICOM series", total=len(jobs))
            for fut in as_completed(futures):  # the parent writes the manifest while workers decode
                yield futures[fut], fut.result()
                bar.advance(task)

    def run(self, files: list[Path | tuple[Path, str]]) -> IngestSummary:
        """Ingest `files` (paths, or (path, name) pairs where the name is a URL) series by series.

        With de-identification on, the store labels sources by checksum instead of their name."""
        t0 = time.perf_counter()
        c = self.cohort
        s = IngestSummary(modality=MODALITY, cohort=str(c.root))
        batch = _ManifestBatch(c)

        headers: list[Header] = []

        def read(source: Source) -> None:
            headers.append(read_header(Instance(source.path, source.label, source.checksum), source.data))

        for_each_source(c, MODALITY, files, read, s, read=True, name_by_label=True, progress=self.progress,
                        description="DICOM headers")

        groups = group_series(headers)
        grouped = {h.instance.checksum for g in groups for h in g.headers}
        duplicates = [h.instance for h in headers if h.instance.checksum not in grouped]
        s.items_skipped_duplicate += len(duplicates)
        for inst in duplicates:
            batch.source(inst.checksum, inst.label, 0, 0)

        jobs, links = [], {}
        imaging_dir = c.path("imaging")
        imaging_dir.mkdir(parents=True, exist_ok=True)
        if groups:
            warm_imports()
            self.transforms = self.transforms or SeriesTransforms(self.config)
        reused = {uid for uid, n in Counter(g.series_uid for g in groups).items() if n > 1}
        for g, (sid, shift, linked_by, new) in zip(groups, _links(c, groups)):
            # A series UID reused across studies (invalid DICOM, but seen in generated data) gets a record id per study.
            record_uid = c.deid.uid(f"{g.study_uid}|{g.series_uid}" if g.series_uid in reused else g.series_uid)
            job = SeriesJob(g.series_uid, record_uid, g.instances, sid, shift, c.deid, self.config, imaging_dir,
                            self.transforms)
            jobs.append(job)
            links[job.record_uid] = (linked_by, new)

        created: set[str] = set()
        try:
            for job, res in self._run_jobs(jobs):
                if not res["ok"]:
                    err = IngestError(**res["error"])
                    for inst in job.instances:
                        c.quarantine(modality=MODALITY, source_path=inst.path, reason=err.reason, record=job.record_uid,
                                     field=err.field, source_checksum=inst.checksum)
                        batch.source(inst.checksum, inst.label, 0, 1)
                    s.quarantined += 1
                    s.quarantine.append(QuarantineEntry(source=err.source, record=job.record_uid, field=err.field,
                                                        reason=err.reason))
                    batch.series_done()
                    continue
                linked_by, new = links[job.record_uid]
                prov = res["provenance"] | {"linked_by": linked_by, "subject_created": new}
                if new and job.subject_id not in created:
                    created.add(job.subject_id)
                    batch.subject(job.subject_id, job.shift_days)
                    s.subjects_added += 1
                batch.record(Record(job.record_uid, job.subject_id, MODALITY, res["path"], res["checksum"],
                                    prov["sources"][0]["source"], job.instances[0].checksum, res["n_items"], prov))
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
