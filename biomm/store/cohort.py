"""A cohort is a folder; `cohort.duckdb` is its manifest.

Layout:
    cohort.duckdb              manifest: meta, subjects, records, sources, quarantine, splits, labels, ...
    deid.key                   the de-identification key (mode 600)
    ehr/events/*.parquet       MEDS events (subject_id, time, code, numeric_value, text_value, unit), one shard per source
    imaging/<uid>.npz          cached, preprocessed series
    omics/*.h5ad               cells are subjects
    sequences/*.parquet        sequences with ids and links
    quarantine/<sha>/...       raw copies of bad input, with reason.json

Writes are atomic (write then rename; manifest rows in one transaction per source) and
re-ingesting a source whose checksum is already recorded changes nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb

from biomm.modalities import MODALITIES
from biomm.store import splits as split_lib
from biomm.store.atomic import atomic_write_bytes, sha256_bytes, sha256_file
from biomm.store.deid import Deidentifier, load_or_create_key
from biomm.store.errors import CohortError

MANIFEST = "cohort.duckdb"
SCHEMA_VERSION = "3"  # 3: FHIR resource keys in an index-free table (biomm.store.ehr)
LOCK_TIMEOUT_ENV = "BIOMM_LOCK_TIMEOUT"  # seconds to wait for another process's manifest lock (default 60)
DEFAULT_LOCK_TIMEOUT = 60.0


def _lock_timeout(value: float | None) -> float:
    if value is not None:
        return value
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise CohortError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


def connect_manifest(manifest: Path, read_only: bool, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to `manifest`; while another process holds its lock (a concurrent ingest), wait
    up to `timeout` seconds (default: $BIOMM_LOCK_TIMEOUT or 60), then CohortError in one line."""
    deadline = time.monotonic() + _lock_timeout(timeout)
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(manifest), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise CohortError(f"cannot open cohort manifest {manifest}: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                pid = re.search(r"PID (\d+)", str(exc))
                holder = f" (process {pid.group(1)})" if pid else ""
                raise CohortError(f"cohort {manifest.parent} is in use by another process{holder}; waited "
                                  f"{_lock_timeout(timeout):g} s for its lock (set {LOCK_TIMEOUT_ENV} to wait longer)"
                                  ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

_DDL = [  # the core tables; each modality's own tables come from its spec (biomm.modalities)
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS subjects (
        subject_id VARCHAR PRIMARY KEY, kind VARCHAR, date_shift_days INTEGER,
        created_by VARCHAR, created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS records (
        record_id VARCHAR PRIMARY KEY, subject_id VARCHAR, modality VARCHAR, path VARCHAR,
        checksum VARCHAR, source_path VARCHAR, source_checksum VARCHAR, n_items BIGINT,
        provenance JSON, created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS sources (
        source_checksum VARCHAR, modality VARCHAR, source_path VARCHAR, n_records BIGINT,
        n_quarantined BIGINT, ingested_at TIMESTAMP, PRIMARY KEY (source_checksum, modality))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        quarantine_id VARCHAR PRIMARY KEY, modality VARCHAR, source_path VARCHAR, stored_path VARCHAR,
        record VARCHAR, field VARCHAR, reason VARCHAR, created_at TIMESTAMP)""",
    "CREATE TABLE IF NOT EXISTS splits (subject_id VARCHAR PRIMARY KEY, split VARCHAR)",
    """CREATE TABLE IF NOT EXISTS labels (
        subject_id VARCHAR, name VARCHAR, value VARCHAR, time TIMESTAMP, source VARCHAR)""",
]


def manifest_ddl() -> list[str]:
    """The DDL of a manifest: the core tables, then the tables each modality's spec owns."""
    return [*_DDL, *(ddl for spec in MODALITIES.values() for ddl in spec.tables)]


def utc_now() -> datetime:
    """Now, as the naive UTC timestamp the manifest stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Record:
    """One row of the records table: an item stored for a subject and modality, and the source it came from."""

    record_id: str
    subject_id: str
    modality: str
    path: str
    checksum: str
    source_path: str
    source_checksum: str
    n_items: int = 1
    provenance: dict[str, Any] | str = field(default_factory=dict)  # a dict, or its JSON text


class Cohort:
    """Open (or create) a cohort folder. Use as a context manager or call `close()`.

    While another process holds the manifest (a concurrent ingest), opening waits up to `lock_timeout`
    seconds ($BIOMM_LOCK_TIMEOUT, default 60) and then raises CohortError."""

    _lock = threading.RLock()

    def __init__(
        self,
        root: str | Path,
        *,
        create: bool = True,
        deid: bool | None = None,
        deid_key: str | None = None,
        max_shift_days: int = 365,
        read_only: bool = False,
        lock_timeout: float | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise CohortError(f"cohort {self.root} is a file; a cohort is a folder")
        if not manifest.exists():
            if not create or read_only:
                raise CohortError(f"no cohort at {self.root} (missing {MANIFEST})")
            self.root.mkdir(parents=True, exist_ok=True)
        self.con = connect_manifest(manifest, read_only, lock_timeout)
        meta = self._read_meta()
        if not read_only and meta.get("schema_version") != SCHEMA_VERSION:
            with self.transaction():  # new cohort, or one from an older biomm: create what is missing
                for ddl in manifest_ddl():
                    self.con.execute(ddl)
                self.set_meta("schema_version", SCHEMA_VERSION)
        stored = meta.get("deid")
        if stored is None:
            if read_only:
                raise CohortError(f"cohort {self.root} has no manifest metadata")
            enabled = True if deid is None else deid
            with self.transaction():
                self.set_meta("deid", "on" if enabled else "off")
                self.set_meta("created_at", utc_now().isoformat())
                self.set_meta("max_shift_days", str(max_shift_days))
        else:
            enabled = stored == "on"
            if deid is not None and deid != enabled:
                raise CohortError(
                    f"cohort {self.root} was created with de-identification {'on' if enabled else 'off'}; "
                    f"a run with it {'on' if deid else 'off'} would mix identified and pseudonymous data"
                )
            max_shift_days = int(meta.get("max_shift_days") or max_shift_days)
        key = load_or_create_key(self.root, deid_key) if enabled else b"\x00" * 32
        self.deid = Deidentifier(key=key, enabled=enabled, max_shift_days=max_shift_days)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the manifest connection (idempotent)."""
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> "Cohort":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One manifest transaction: committed when the block ends, rolled back when it raises."""
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    @contextlib.contextmanager
    def bounded_memory(self, mib: int) -> Iterator[None]:
        """DuckDB's memory limit for the block: manifest blocks it has read are evicted past `mib` instead of
        staying cached (an ingest over a large cohort keeps a flat footprint); the old limit comes back after."""
        old = self.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        self.con.execute(f"SET memory_limit = '{int(mib)}MB'")
        try:
            yield
            self.con.execute("CHECKPOINT")  # within the limit: a checkpoint at close would run unbounded
        finally:
            self.con.execute(f"SET memory_limit = '{old}'")

    # ------------------------------------------------------------------ meta
    def _read_meta(self) -> dict[str, str]:
        """All of the meta table in one query; empty for a new manifest."""
        try:
            return dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        except duckdb.CatalogException:
            return {}

    def get_meta(self, key: str) -> str | None:
        """A value of the meta table (None when unset)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the meta table."""
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    @property
    def deid_enabled(self) -> bool:
        """Whether the cohort holds de-identified (pseudonymous) data."""
        return self.deid.enabled

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> Path:
        """A path inside the cohort folder."""
        return self.root.joinpath(*parts)

    def relative(self, path: str | Path) -> str:
        """`path` (inside the cohort) relative to the cohort folder, as the manifest stores it."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    # ------------------------------------------------------------------ sources (idempotency)
    def source_done(self, checksum: str, modality: str) -> bool:
        """Whether a source with this checksum was already ingested as `modality`."""
        row = self.con.execute(
            "SELECT 1 FROM sources WHERE source_checksum = ? AND modality = ?", [checksum, modality]
        ).fetchone()
        return row is not None

    def mark_source(self, checksum: str, modality: str, source_path: str, n_records: int, n_quarantined: int) -> None:
        """Record a source as ingested (`source_path`: its store label), so a re-run skips it."""
        self.con.execute(
            "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?)",
            [checksum, modality, source_path, n_records, n_quarantined, utc_now()],
        )

    def mark_sources(self, modality: str, sources: Iterable[tuple[str, str, int, int]]) -> None:
        """`mark_source` for many sources at once: (checksum, store label, records, quarantined) each."""
        rows = list(sources)
        now = utc_now()
        self.insert_rows("sources", {
            "source_checksum": [r[0] for r in rows], "modality": [modality] * len(rows),
            "source_path": [r[1] for r in rows], "n_records": [r[2] for r in rows],
            "n_quarantined": [r[3] for r in rows], "ingested_at": [now] * len(rows)}, replace=True)

    def ingested_sources(self, modality: str) -> set[str]:
        """Checksums of every source already ingested (or quarantined whole) as `modality`."""
        return {r[0] for r in self.con.execute(
            "SELECT source_checksum FROM sources WHERE modality = ?", [modality]).fetchall()}

    # ------------------------------------------------------------------ subjects and records
    def ensure_subject(self, subject_id: str, kind: str, date_shift_days: int, created_by: str) -> None:
        """Add a subject (and its hash split) unless it exists."""
        self.con.execute(
            "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?, ?, ?)",
            [subject_id, kind, date_shift_days, created_by, utc_now()],
        )
        self.con.execute(
            "INSERT OR IGNORE INTO splits VALUES (?, ?)", [subject_id, split_lib.split_of(subject_id)]
        )

    def add_subjects(self, subjects: Iterable[tuple[str, int]], kind: str, created_by: str) -> int:
        """`ensure_subject` for many subjects at once, (subject id, date shift in days) each; returns how many were new."""
        rows = list(subjects)
        if not rows:
            return 0
        before = self.subject_count()
        now = utc_now()
        self.insert_rows("subjects", {
            "subject_id": [r[0] for r in rows], "kind": [kind] * len(rows), "date_shift_days": [r[1] for r in rows],
            "created_by": [created_by] * len(rows), "created_at": [now] * len(rows)})
        self.insert_rows("splits", {"subject_id": [r[0] for r in rows],
                                    "split": [split_lib.split_of(r[0]) for r in rows]})
        return self.subject_count() - before

    def subject_count(self) -> int:
        """How many subjects the cohort holds."""
        return self.con.execute("SELECT count(*) FROM subjects").fetchall()[0][0]

    def subject_shift(self, subject_id: str) -> int | None:
        """A subject's date shift in days, or None when the subject is not in the cohort."""
        return self.subject_shifts([subject_id]).get(subject_id)

    def subject_shifts(self, subject_ids: Iterable[str]) -> dict[str, int]:
        """{subject: date shift in days} for those of `subject_ids` in the cohort: one query for all."""
        rows = self.con.execute("SELECT subject_id, date_shift_days FROM subjects WHERE subject_id IN (SELECT unnest(?))",
                                [list(dict.fromkeys(subject_ids))]).fetchall()
        return {sid: int(shift) for sid, shift in rows}

    def add_record(
        self,
        record_id: str,
        subject_id: str,
        modality: str,
        path: str,
        checksum: str,
        source_path: str,
        source_checksum: str,
        n_items: int = 1,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        """Add (or replace) one record of a subject."""
        self.con.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [record_id, subject_id, modality, path, checksum, source_path, source_checksum, n_items,
             json.dumps(provenance or {}, default=str), utc_now()],
        )

    def add_records(self, records: Iterable[Record]) -> None:
        """Add (or replace, by record id) many records at once."""
        rows = list(records)
        now = utc_now()
        columns: dict[str, list] = {name: [getattr(r, name) for r in rows] for name in (
            "record_id", "subject_id", "modality", "path", "checksum", "source_path", "source_checksum", "n_items")}
        columns["provenance"] = [r.provenance if isinstance(r.provenance, str) else json.dumps(r.provenance, default=str)
                                 for r in rows]
        columns["created_at"] = [now] * len(rows)
        self.insert_rows("records", columns, replace=True)

    def records(self, modality: str | None = None) -> list[dict[str, Any]]:
        """Every record (of one `modality`) as a dict of the records table's columns, by record id."""
        sql = "SELECT * FROM records" + (" WHERE modality = ?" if modality else "") + " ORDER BY record_id"
        cur = self.con.execute(sql, [modality] if modality else [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def record_paths(self, modalities: Sequence[str]) -> set[str]:
        """The distinct `path` values of the records of `modalities`."""
        return {r[0] for r in self.con.execute(
            "SELECT DISTINCT path FROM records WHERE modality IN (SELECT unnest(?))", [list(modalities)]).fetchall()}

    def subjects(self, kind: str | None = None) -> list[str]:
        """Subject ids (of one `kind`: patient, cell), sorted."""
        sql = "SELECT subject_id FROM subjects" + (" WHERE kind = ?" if kind else "") + " ORDER BY subject_id"
        return [r[0] for r in self.con.execute(sql, [kind] if kind else []).fetchall()]

    def split_map(self, kind: str | None = None) -> dict[str, str]:
        """Every subject's split (`train` / `val` / `test`), optionally only subjects of one `kind` (patient, cell)."""
        if kind is None:
            return dict(self.con.execute("SELECT subject_id, split FROM splits").fetchall())
        return dict(self.con.execute(
            "SELECT s.subject_id, s.split FROM splits s JOIN subjects USING (subject_id) WHERE kind = ?", [kind]).fetchall())

    def modality_counts(self) -> dict[str, int]:
        """Subjects with at least one record, per modality."""
        return dict(self.con.execute("SELECT modality, count(DISTINCT subject_id) FROM records GROUP BY 1").fetchall())

    def subjects_with_any(self, modalities: list[str]) -> set[str]:
        """Subjects that have a record of at least one of `modalities`."""
        return {r[0] for r in self.con.execute(
            "SELECT DISTINCT subject_id FROM records WHERE modality IN (SELECT unnest(?))", [list(modalities)]).fetchall()}

    def subjects_changed_since(self, since: datetime) -> set[str]:
        """Subjects with a record written after `since` (UTC, the manifest's clock: `utc_now()`)."""
        return {r[0] for r in self.con.execute(
            "SELECT DISTINCT subject_id FROM records WHERE created_at > ?", [since]).fetchall()}

    def split_subjects(self, split: str) -> list[str]:
        """Subject ids of one split (`train`, `val`, `test`), sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT subject_id FROM splits WHERE split = ? ORDER BY subject_id", [split]).fetchall()]

    def set_label(self, subject_id: str, name: str, value: Any, time: datetime | None = None, source: str = "") -> None:
        """One label per (subject, name, time): setting it again replaces it."""
        self.con.execute("DELETE FROM labels WHERE subject_id = ? AND name = ? AND time IS NOT DISTINCT FROM ?",
                         [subject_id, name, time])
        self.con.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?)", [subject_id, name, str(value), time, source])

    def set_split(self, subject_id: str, split: str) -> None:
        """Override the hash split (e.g. to keep a public data set's official split)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        self.con.execute("INSERT OR REPLACE INTO splits VALUES (?, ?)", [subject_id, split])

    def replace_labels(self, name: str, subject_ids: Sequence[str], values: Sequence[Any], source: str = "") -> None:
        """Set the untimed label `name` of many subjects at once, replacing their earlier untimed value."""
        if not len(subject_ids):
            return
        import pyarrow as pa  # only for bulk writes: `cohort info` starts without it

        table = pa.table({"subject_id": [str(s) for s in subject_ids], "value": [str(v) for v in values]})
        self.con.register("biomm_labels", table)
        try:
            self.con.execute("DELETE FROM labels WHERE name = ? AND time IS NULL AND subject_id IN "
                             "(SELECT subject_id FROM biomm_labels)", [name])
            self.con.execute("INSERT INTO labels SELECT subject_id, ?, value, NULL, ? FROM biomm_labels", [name, source])
        finally:
            self.con.unregister("biomm_labels")

    def labels(self, name: str) -> list[tuple[str, str, datetime | None]]:
        """(subject id, value, time) of every label `name`, by subject and time."""
        return self.con.execute("SELECT subject_id, value, time FROM labels WHERE name = ? ORDER BY subject_id, time",
                                [name]).fetchall()

    def code_displays(self) -> dict[str, str]:
        """MEDS code -> display name, as the EHR reader recorded them (empty for a cohort made before the codes
        table existed, opened read-only)."""
        try:
            return dict(self.con.execute("SELECT code, display FROM codes").fetchall())
        except duckdb.CatalogException:
            return {}

    # ------------------------------------------------------------------ quarantine
    def quarantine(
        self,
        *,
        modality: str,
        source_path: str | Path,
        reason: str,
        record: str | None = None,
        field: str | None = None,
        payload: bytes | None = None,
        source_checksum: str | None = None,
    ) -> str:
        """Keep bad input: a raw copy (the whole file, or `payload` for one bad record) plus reason.json.
        `source_checksum` (the file's sha256, hashed here when not given) names it in the manifest.

        Idempotent: the same bad input with the same reason maps to the same quarantine entry."""
        source_path = Path(source_path)
        if payload is None:
            payload = source_path.read_bytes() if source_path.is_file() else b""
        digest = sha256_bytes(payload)
        qid = sha256_bytes(f"{modality}|{source_path.name}|{record}|{reason}|{digest}".encode())[:24]
        folder = self.path("quarantine", qid)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # raw input may hold identified data: only the owner reads it
        # file names often carry patient names or ids: under de-identification the manifest and the
        # stored copy are named by checksum; the raw bytes stay only inside this owner-only folder
        if source_checksum is None:
            source_checksum = sha256_file(source_path) if source_path.is_file() else digest
        label = self.source_label(source_path, source_checksum)
        name = "input" + "".join(source_path.suffixes[-2:]) if self.deid.enabled else source_path.name
        stored = folder / (name if record is None else f"{name}.record.json")
        info = {
            "quarantine_id": qid, "modality": modality, "source": label, "record": record,
            "field": field, "reason": reason, "sha256": digest,
        }
        if not stored.exists():
            atomic_write_bytes(stored, payload)
            atomic_write_bytes(folder / "reason.json", json.dumps(info, indent=2).encode())
        self.con.execute(
            "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [qid, modality, label, self.relative(stored), record, field, reason, utc_now()],
        )
        return qid

    def quarantine_count(self, modality: str | None = None) -> int:
        """How many quarantine entries the cohort holds (of one `modality`)."""
        sql = "SELECT count(*) FROM quarantine" + (" WHERE modality = ?" if modality else "")
        return self.con.execute(sql, [modality] if modality else []).fetchall()[0][0]

    def quarantined_sources(self, modality: str) -> dict[str, tuple[str, str]]:
        """Sources of `modality` that an earlier run quarantined (whole or in part): checksum -> (store
        label, the first reason recorded for it)."""
        rows = self.con.execute(
            "SELECT s.source_checksum, s.source_path, min(q.reason) FROM sources s JOIN quarantine q "
            "ON q.source_path = s.source_path AND q.modality = s.modality "
            "WHERE s.modality = ? AND s.n_quarantined > 0 GROUP BY 1, 2", [modality]).fetchall()
        return {checksum: (label, reason) for checksum, label, reason in rows}

    def quarantined(self) -> list[dict[str, Any]]:
        """Every quarantine entry as a dict, oldest first."""
        cur = self.con.execute("SELECT * FROM quarantine ORDER BY created_at, quarantine_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def source_label(self, path: str | Path, checksum: str) -> str:
        """How a source file is named in the store: its path when de-identification is off; else its
        checksum and suffix, since file names often carry patient names or ids."""
        if not self.deid.enabled:
            return str(path)
        suffix = "".join(Path(path).suffixes[-2:])
        return f"sha256:{checksum[:16]}{suffix}"

    # ------------------------------------------------------------------ bulk writes (for the store's modules)
    def insert_rows(self, table: str, columns: Mapping[str, Sequence], *, replace: bool = False) -> None:
        """Bulk insert `columns` (name -> values) into a manifest table through Arrow (one statement, not one
        per row); rows whose key exists are kept, or replaced with `replace`."""
        if not columns or not len(next(iter(columns.values()))):
            return
        import pyarrow as pa  # only for bulk writes: `cohort info` starts without it

        self.con.register("bulk_rows", pa.table({k: list(v) for k, v in columns.items()}))
        try:
            names = ", ".join(columns)
            self.con.execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO {table} ({names}) "
                             f"SELECT {names} FROM bulk_rows")
        finally:
            self.con.unregister("bulk_rows")
