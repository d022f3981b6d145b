"""FHIR ingest: Bundles and bulk NDJSON -> de-identified MEDS events in the cohort store.

The default path decodes only the fields the events need (msgspec; see `fast`) and extracts
them in worker processes when there are many files (`parse`); `strict: true` also validates every
resource with `fhir.resources.R4B`. The parent keeps pseudonymisation, duplicate checks, quarantine
and writing; a few files are in flight at a time and large NDJSON files stream in pieces, so memory
stays flat as the input grows."""
from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import re
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomm.ingest.base import (IngestError, IngestSummary, Source, expand_sources, for_each_source, iter_with_progress,
                               open_cohort, quarantine, reader_config)
from biomm.ingest.ehr.config import FhirIngestConfig
from biomm.ingest.ehr.extract import Extracted, Extractor, scrub_names
from biomm.ingest.ehr.parse import ParsedFile, parse_file, parse_pieces, raw_record
from biomm.ingest.ehr.source import FHIR_SUFFIXES
from biomm.store import ehr as ehr_store
from biomm.store import imaging as imaging_store
from biomm.store.atomic import atomic_path
from biomm.store.cohort import Cohort, Record

MODALITY = "ehr"
EVENTS_DIR = ("ehr", "events")
NOTES_DIR = ("ehr", "notes")
NOTE_SCHEMA = pa.schema([("subject_id", pa.string()), ("time", pa.timestamp("us")), ("kind", pa.string()),
                         ("text", pa.string())])
EVENT_SCHEMA = pa.schema([
    ("subject_id", pa.string()),
    ("time", pa.timestamp("us")),
    ("code", pa.string()),
    ("numeric_value", pa.float32()),
    ("text_value", pa.string()),
    ("unit", pa.string()),
])
CHUNK_RESOURCES = 20_000  # resources resolved against the manifest at a time (bounds memory)
POOL_MIN_FILES = 16  # below this, worker start-up costs more than it saves
POOL_MAX_FILE_BYTES = 64 << 20  # larger files stream through the parent in pieces instead
MANIFEST_MEMORY_MIB = 32  # DuckDB otherwise caches every manifest block it reads: RSS grew with the cohort


class _Pending:
    """A resource that passed extraction and waits for the duplicate check against the manifest."""

    __slots__ = ("key", "content", "extracted", "record", "raw")

    def __init__(self, key: str, content: str, extracted: Extracted, record: str, raw: bytes):
        self.key, self.content, self.extracted, self.record, self.raw = key, content, extracted, record, raw


class FhirIngest:
    """One ingest run into one cohort. Files are read one at a time; their events and manifest rows
    are committed in batches (one Parquet shard and one manifest transaction per batch)."""

    def __init__(self, cohort: Cohort, config: FhirIngestConfig, progress: bool = True):
        self.cohort = cohort
        self.config = config
        self.latest = Extractor().latest
        self.show_progress = progress
        self.summary = IngestSummary(modality=MODALITY, cohort=str(cohort.root))
        self.batch = _Batch(cohort)
        self.displays: dict[str, str] = {}
        self.pending: list[tuple[_Pending, _SourceFile, Path]] = []  # awaiting one duplicate check per chunk

    # ------------------------------------------------------------------ run
    def run(self, sources: Iterable[str | Path]) -> IngestSummary:
        """Ingest the FHIR files and folders of `sources`; returns the run's summary."""
        t0 = time.perf_counter()
        files = expand_sources(sources, FHIR_SUFFIXES)
        remove_orphan_shards(self.cohort)
        ehr_store.migrate_legacy(self.cohort)
        # the per-source loop only selects the new files here: they are parsed below, in worker processes
        # when that pays, and a bad file's records are quarantined one by one as they are applied
        todo: list[tuple[Path, str]] = []

        def select(source: Source) -> None:
            todo.append((source.path, source.checksum))

        for_each_source(self.cohort, MODALITY, files, select, self.summary, progress=False)
        for pieces in iter_with_progress(self._parsed(todo), "FHIR ingest", total=len(todo), disable=not self.show_progress):
            source = None
            for parsed in pieces:
                source = source or self.batch.open_file(parsed.path, parsed.checksum)
                self._apply(parsed, source)
            if len(self.pending) >= CHUNK_RESOURCES:
                self._resolve()
            if self.batch.full():
                self._commit()
        self._commit()
        self.summary.seconds = round(time.perf_counter() - t0, 3)
        return self.summary

    def _workers(self, n_files: int) -> int:
        """Configured, else one per core from 4 cores and 16 files: on 2 cores the parent's own half
        (keys, duplicate checks, writing) leaves too little for workers to gain (measured ~1.1x)."""
        if self.config.workers:
            return self.config.workers
        cores = os.cpu_count() or 1
        return min(cores, 8) if cores >= 4 and n_files >= POOL_MIN_FILES else 1

    def _parsed(self, todo: list[tuple[Path, str]]) -> Iterator[Iterable[ParsedFile]]:
        """Each file's parsed pieces, in input order: in worker processes when that pays (a few files in
        flight per worker, consumed as they come), else in-process and streamed in pieces, so memory
        stays bounded either way. Files too large for one piece are always streamed in-process."""
        strict = self.config.strict
        workers = self._workers(len(todo))
        if workers <= 1:
            for path, checksum in todo:
                yield parse_pieces(path, checksum, strict, self.latest)
            return
        small = [(p, c) for p, c in todo if p.stat().st_size <= POOL_MAX_FILE_BYTES]
        large = [(p, c) for p, c in todo if p.stat().st_size > POOL_MAX_FILE_BYTES]
        for path, checksum in large:
            yield parse_pieces(path, checksum, strict, self.latest)
        todo = small
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending: deque = deque()
            items = iter(todo)
            for path, checksum in itertools.islice(items, 2 * workers):
                pending.append(pool.submit(parse_file, path, checksum, strict, self.latest))
            while pending:
                parsed = pending.popleft().result()
                nxt = next(items, None)
                if nxt is not None:
                    pending.append(pool.submit(parse_file, nxt[0], nxt[1], strict, self.latest))
                yield (parsed,)

    def _commit(self) -> None:
        self._resolve()
        added, records, events = self.batch.commit()
        if self.displays:
            ehr_store.add_codes(self.cohort, self.displays)
            self.displays = {}
        self.summary.subjects_added += added
        self.summary.records_written += records
        self.summary.items_written += events
        people = self.batch.people  # names seen in earlier batches still scrub later notes
        self.batch = _Batch(self.cohort)
        self.batch.people = people

    def _quarantine(self, err: IngestError, path: Path, source: "_SourceFile", payload: bytes | None = None) -> None:
        quarantine(self.cohort, MODALITY, self.summary, path, err, payload=payload, checksum=source.checksum)
        source.n_quarantined += 1

    def _apply(self, parsed: ParsedFile, source: "_SourceFile") -> None:
        """The parent's half: quarantine, pseudonymous keys, duplicate checks, then the batch."""
        path = parsed.path
        self.summary.items_ignored += parsed.ignored
        self.batch.people |= parsed.people
        for code, display in parsed.displays.items():
            self.displays.setdefault(code, display)
        for reason, record, fieldname, raw in parsed.bad:
            self._quarantine(IngestError(path, reason, record=record, field=fieldname), path, source, raw)
        token = self.cohort.deid.token
        pending = self.pending
        for material, content, extracted, record, locator in parsed.good:
            pending.append((_Pending(token("resource", material), content, extracted, record,
                                     lambda loc=locator: raw_record(path, loc)), source, path))
            if len(pending) >= CHUNK_RESOURCES:  # a large NDJSON file resolves in pieces (bounded memory)
                self._resolve()
        if parsed.file_error is not None:  # keep what was read before it; quarantine the raw file
            reason, record, fieldname = parsed.file_error
            self._quarantine(IngestError(path, reason, record=record, field=fieldname), path, source)

    def _resolve(self) -> None:
        """The duplicate check of the pending resources, one manifest lookup for all of them (per-file lookups
        scan the manifest once per file: quadratic): drop exact duplicates, quarantine same-id-different-content,
        hand the rest to the batch. Resources of this run's earlier batches are in the manifest by now."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        known = ehr_store.known_resources(self.cohort, [p.key for p, _, _ in pending])
        for p, source, path in pending:
            prior = known.get(p.key) or self.batch.resources.get(p.key)
            if prior is None:
                self.batch.add(p, source)
            elif prior == p.content:
                self.summary.items_skipped_duplicate += 1
            else:
                err = IngestError(path, "duplicate resource id with different content", record=p.record, field="id")
                self._quarantine(err, path, source, p.raw())


class _SourceFile:
    __slots__ = ("checksum", "label", "subject_events", "n_quarantined")

    def __init__(self, checksum: str, label: str):
        self.checksum, self.label = checksum, label
        self.subject_events: dict[str, int] = {}
        self.n_quarantined = 0


def remove_orphan_shards(cohort: Cohort) -> None:
    """Shards written by a run that died before its manifest commit are not part of the cohort."""
    referenced: set[str] = set()
    for paths in cohort.record_paths([MODALITY, "text"]):
        referenced.update(paths.split(","))
    for folder in (cohort.path(*EVENTS_DIR), cohort.path(*NOTES_DIR)):
        for shard in folder.glob("*.parquet") if folder.exists() else ():
            if cohort.relative(shard) not in referenced:
                shard.unlink()


class _Batch:
    """Events, subjects and manifest rows of a few source files, committed together."""

    MAX_FILES = 64
    MAX_EVENTS = 500_000

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        self.cols: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
        self.shifts: list[int] = []  # date shift (days) of each event in cols, applied when the shard is written
        self.resources: dict[str, str] = {}
        self.imaging: list[dict] = []
        self.notes: list[tuple] = []  # (subject, time, kind, text, file checksum)
        self.names: dict[str, list[str]] = {}  # subject -> own names, to scrub from notes
        self.people: set[str] = set()  # practitioners' and other people's names, scrubbed from every note
        self.files: dict[str, _SourceFile] = {}
        self.subjects: dict[str, tuple[str, int]] = {}  # source patient id -> (pseudonym, shift)

    def full(self) -> bool:
        return len(self.files) >= self.MAX_FILES or len(self.cols["code"]) >= self.MAX_EVENTS

    def open_file(self, path: Path, checksum: str) -> _SourceFile:
        source = _SourceFile(checksum, self.cohort.source_label(path, checksum))
        self.files[checksum] = source
        return source

    def _subject(self, source_patient: str) -> tuple[str, int]:
        hit = self.subjects.get(source_patient)
        if hit is None:
            deid = self.cohort.deid
            hit = (deid.subject_id(source_patient), deid.date_shift_days(source_patient))
            self.subjects[source_patient] = hit
        return hit

    def add(self, p: _Pending, source: _SourceFile) -> None:
        self.resources[p.key] = p.content
        sid, shift = self._subject(p.extracted.patient)
        delta = timedelta(days=shift)
        events = p.extracted.events
        n = len(events)
        # times stay unshifted here: _write_shard shifts the whole column at once
        cols = self.cols
        sids, tcol, codes, nums, texts, units = (cols["subject_id"], cols["time"], cols["code"], cols["numeric_value"],
                                                 cols["text_value"], cols["unit"])
        for t, code, num, text, unit in events:
            sids.append(sid)
            tcol.append(t)
            codes.append(code)
            nums.append(num)
            texts.append(text)
            units.append(unit)
        if n:
            self.shifts.extend([shift] * n)
        source.subject_events[sid] = source.subject_events.get(sid, 0) + n
        if p.extracted.names:
            self.names.setdefault(sid, []).extend(p.extracted.names)
        for t, kind, text in p.extracted.notes:
            self.notes.append((sid, None if t is None else t + delta, kind, text, source.checksum))
        deid = self.cohort.deid
        for row in p.extracted.imaging:
            self.imaging.append({**row, "study_uid": deid.uid(row["study_uid"]), "series_uid": deid.uid(row["series_uid"]),
                                 "subject_id": sid, "time": row["time"] + delta})

    def _write(self, folder: tuple[str, ...], table: pa.Table) -> str:
        """One Parquet shard named by the batch's sources, so a re-run after a crash overwrites it."""
        table = table.sort_by([("subject_id", "ascending"), ("time", "ascending")])
        name = hashlib.sha256("".join(sorted(self.files)).encode()).hexdigest()[:24]
        target = self.cohort.path(*folder, f"{name}.parquet")
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return self.cohort.relative(target)

    def _write_shard(self) -> str:
        if not self.cols["code"]:
            return ""
        # each event's date shift, applied to the whole time column at once (nulls stay null)
        raw = pa.array(self.cols["time"], type=pa.timestamp("us"))
        shift = pa.array(np.asarray(self.shifts, dtype=np.int64) * 86_400_000_000, type=pa.duration("us"))
        columns = {**self.cols, "time": pc.add(raw, shift)}
        return self._write(EVENTS_DIR, pa.table(columns, schema=EVENT_SCHEMA))

    def _write_notes(self) -> str:
        """Narrative text with the patient's own names and the names of the people the records mention
        (practitioners, related persons) scrubbed (free text is the riskiest PHI carrier)."""
        if not self.notes:
            return ""
        people = (re.compile(r"\b(" + "|".join(map(re.escape, sorted(self.people, key=len, reverse=True))) + r")\b",
                             re.IGNORECASE) if self.people else None)  # one pass for all of them
        texts = [scrub_names(people.sub("[NAME]", text) if people else text, self.names.get(sid, []))
                 for sid, _, _, text, _ in self.notes]
        return self._write(NOTES_DIR, pa.table({
            "subject_id": [n[0] for n in self.notes], "time": [n[1] for n in self.notes],
            "kind": [n[2] for n in self.notes], "text": texts}, schema=NOTE_SCHEMA))

    def commit(self) -> tuple[int, int, int]:
        """Write the shard, then the manifest rows in one transaction: (subjects added, records, events)."""
        if not self.files:
            return 0, 0, 0
        shard = self._write_shard()
        notes_shard = self._write_notes()
        n_events = len(self.cols["code"])
        with_events = {sid for f in self.files.values() for sid in f.subject_events}
        subjects = [(sid, shift) for sid, shift in self.subjects.values() if sid in with_events]
        ehr_prov = orjson.dumps({"reader": "biomm.ingest.ehr.fhir", "format": "fhir-r4", "deid": self.cohort.deid.enabled}).decode()
        records = [
            Record(f"ehr:{sid}:{f.checksum[:16]}", sid, MODALITY, shard, f.checksum, f.label, f.checksum, n, ehr_prov)
            for f in self.files.values() for sid, n in sorted(f.subject_events.items())
        ]
        note_counts: dict[tuple[str, str], int] = {}
        for sid, _, _, _, checksum in self.notes:
            note_counts[(sid, checksum)] = note_counts.get((sid, checksum), 0) + 1
        text_prov = orjson.dumps({"reader": "biomm.ingest.ehr.fhir", "format": "fhir-r4 narrative", "names_scrubbed": True}).decode()
        records += [
            Record(f"text:{sid}:{checksum[:16]}", sid, "text", notes_shard, checksum, self.files[checksum].label, checksum,
                   n, text_prov)
            for (sid, checksum), n in sorted(note_counts.items())
        ]
        files = list(self.files.values())
        with self.cohort.transaction():
            added = self.cohort.add_subjects(subjects, kind="patient", created_by="fhir")
            self.cohort.add_records(records)
            ehr_store.add_resources(self.cohort, self.resources)
            imaging_store.add_studies(self.cohort, self.imaging)
            self.cohort.mark_sources(MODALITY, [(f.checksum, f.label, len(f.subject_events), f.n_quarantined)
                                                for f in files])
        return added, len(records), n_events + len(self.notes)


def ingest(
    sources: Iterable[str | Path],
    cohort: str | Path | Cohort,
    config: FhirIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest FHIR Bundles / NDJSON files or folders into a cohort (a folder, created when missing, or an open
    Cohort); `config` is a FhirIngestConfig, a dict, a YAML path or None for the defaults."""
    cfg = reader_config(FhirIngestConfig, config)
    with open_cohort(cohort, cfg.deid) as c, c.bounded_memory(MANIFEST_MEMORY_MIB):
        return FhirIngest(c, cfg, progress).run(sources)
