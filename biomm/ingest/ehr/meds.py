"""MEDS in: an existing MEDS dataset (v0.4; v0.3 through the shim of `biomm.store.meds.read_meds_shard`) as
a cohort's EHR, de-identified like FHIR input.

The whole dataset is checked first (`check_meds`: metadata files, int subject ids, sorted rows, each
subject in one shard); a dataset that breaks a rule raises MedsError naming the file and the rule, and
nothing is written. Then each data shard is one source of the per-source loop: its subject ids become
keyed pseudonyms (`deid.subject_id(str(id))`, with that subject's date shift applied to every time), its
events one cohort shard, its subjects, records and splits one manifest transaction; a re-run skips shards
already ingested. `NOTE/<kind>` events with a text_value (how `biomm export meds --notes` writes notes)
become the cohort's notes."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomm.ingest.base import IngestError, IngestSummary, Source, for_each_source, open_cohort, reader_config
from biomm.ingest.ehr.config import MedsIngestConfig
from biomm.ingest.ehr.fhir import EVENT_SCHEMA, EVENTS_DIR, NOTE_SCHEMA, NOTES_DIR, remove_orphan_shards
from biomm.store import ehr as ehr_store
from biomm.store.atomic import atomic_path
from biomm.store.cohort import Cohort, Record
from biomm.store.meds import FROM_MEDS_SPLIT, NOTE_PREFIX, MedsDataset, add_splits, check_meds, read_meds_shard

MODALITY = "ehr"
US_PER_DAY = 86_400_000_000


class MedsIngest:
    """One `biomm ingest meds` run into one cohort: check every dataset, then ingest shard by shard."""

    def __init__(self, cohort: Cohort, config: MedsIngestConfig, progress: bool = True):
        self.cohort, self.config, self.progress = cohort, config, progress
        self.summary = IngestSummary(modality=MODALITY, cohort=str(cohort.root))

    def run(self, datasets: Iterable[MedsDataset]) -> IngestSummary:
        """Ingest MEDS datasets that passed `check_meds`; returns the run's summary."""
        t0 = time.perf_counter()
        remove_orphan_shards(self.cohort)
        for ds in datasets:
            self.dataset = ds
            self.known = self.cohort.subjects_with_any([MODALITY])
            for_each_source(self.cohort, MODALITY, ds.shards, self._shard, self.summary, progress=self.progress,
                            description="MEDS ingest")
            if ds.descriptions:
                with self.cohort.transaction():
                    ehr_store.add_codes(self.cohort, ds.descriptions)
            if not ds.splits:
                self.summary.warnings.append(f"{ds.root}: no metadata/subject_splits.parquet; subjects got the hash split")
        self.summary.seconds = round(time.perf_counter() - t0, 3)
        return self.summary

    def _shard(self, source: Source) -> None:
        """One data shard: pseudonymous ids and shifted times, notes apart, one cohort shard, one transaction."""
        ds: MedsDataset = self.dataset
        table = read_meds_shard(ds, source.path)
        if not table.num_rows:
            self.cohort.mark_source(source.checksum, MODALITY, source.label, 0, 0)
            return
        deid = self.cohort.deid
        meds_ids = ds.subjects[source.path]
        pseudonyms = [deid.subject_id(str(i)) for i in meds_ids.tolist()]
        clash = sorted(set(pseudonyms) & self.known)
        if clash:
            raise IngestError(source.path, f"{len(clash)} of its subjects already have EHR events in the cohort (from "
                              "another source or an earlier version of this shard); ingest it into a new cohort")
        shifts = np.array([deid.date_shift_days(str(i)) for i in meds_ids.tolist()], dtype=np.int64)
        row_subject = np.searchsorted(meds_ids, table.column("subject_id").to_numpy())  # meds_ids is sorted
        sid = pa.array(np.asarray(pseudonyms, dtype=object)[row_subject], pa.string())
        shift = pa.array(shifts[row_subject] * US_PER_DAY, pa.duration("us"))
        times = pc.add(table.column("time"), shift)
        is_note = np.zeros(table.num_rows, bool)
        if self.config.notes_as_text:
            is_note = (pc.starts_with(table.column("code"), NOTE_PREFIX).to_numpy(zero_copy_only=False)
                       & table.column("text_value").is_valid().to_numpy(zero_copy_only=False))
        keep = pa.array(~is_note)
        events = pa.table({"subject_id": sid, "time": times, "code": table.column("code"),
                           "numeric_value": table.column("numeric_value"), "text_value": table.column("text_value"),
                           "unit": table.column("unit")}, schema=EVENT_SCHEMA).filter(keep)
        notes = pa.table({"subject_id": sid, "time": times,
                          "kind": pc.utf8_slice_codeunits(table.column("code"), len(NOTE_PREFIX)),
                          "text": table.column("text_value")}, schema=NOTE_SCHEMA).filter(pa.array(is_note))
        events_shard = self._write(EVENTS_DIR, events, source.checksum)
        notes_shard = self._write(NOTES_DIR, notes, source.checksum)
        prov = orjson.dumps({"reader": "biomm.ingest.ehr.meds", "format": f"meds-{ds.version}",
                             "dataset": ds.metadata.get("dataset_name"), "deid": deid.enabled}).decode()
        records = self._records(events, "ehr", events_shard, source, prov)
        records += self._records(notes, "text", notes_shard, source, prov)
        subjects = [(p, int(s)) for p, s in zip(pseudonyms, shifts)]
        splits = {}
        if self.config.keep_splits:
            for i, p in zip(meds_ids.tolist(), pseudonyms):
                split = FROM_MEDS_SPLIT.get(ds.splits.get(i, ""))
                if split:
                    splits[p] = split
        with self.cohort.transaction():
            added = self.cohort.add_subjects(subjects, kind="patient", created_by="meds")
            self.cohort.add_records(records)
            add_splits(self.cohort, splits)
            self.cohort.mark_source(source.checksum, MODALITY, source.label, len(subjects), 0)
        self.known.update(pseudonyms)
        self.summary.subjects_added += added
        self.summary.records_written += len(records)
        self.summary.items_written += events.num_rows + notes.num_rows

    def _write(self, folder: tuple[str, ...], table: pa.Table, checksum: str) -> str:
        """A cohort shard named by the source's checksum (a re-run after a crash overwrites it); '' when empty."""
        if not table.num_rows:
            return ""
        table = table.sort_by([("subject_id", "ascending"), ("time", "ascending")])
        name = "meds-" + hashlib.sha256(checksum.encode()).hexdigest()[:24]
        target = self.cohort.path(*folder, f"{name}.parquet")
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return self.cohort.relative(target)

    @staticmethod
    def _records(table: pa.Table, modality: str, shard: str, source: Source, prov: str) -> list[Record]:
        if not table.num_rows:
            return []
        counts = pc.value_counts(table.column("subject_id")).to_pylist()
        return [Record(f"{modality}:{c['values']}:{source.checksum[:16]}", c["values"], modality, shard, source.checksum,
                       source.label, source.checksum, c["counts"], prov) for c in sorted(counts, key=lambda c: c["values"])]


def ingest(
    sources: Iterable[str | Path],
    cohort: str | Path | Cohort,
    config: MedsIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest MEDS dataset folders (v0.4 or v0.3) into a cohort (a folder, created when missing, or an open Cohort);
    `config` is a MedsIngestConfig, a dict, a YAML path or None for the defaults. Raises MedsError (naming the
    file and the rule) before writing anything when a dataset breaks a MEDS rule."""
    cfg = reader_config(MedsIngestConfig, config)
    datasets = [check_meds(s) for s in sources]  # every rule checked before the cohort is opened or written
    with open_cohort(cohort, cfg.deid) as c:
        return MedsIngest(c, cfg, progress).run(datasets)
