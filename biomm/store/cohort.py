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
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb

from biomm.store import splits as split_lib
from biomm.store.atomic import atomic_write_bytes, sha256_bytes, sha256_file
from biomm.store.deid import Deidentifier, load_or_create_key

MANIFEST = "cohort.duckdb"
SCHEMA_VERSION = "2"

_DDL = [
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
    """CREATE TABLE IF NOT EXISTS fhir_resources (
        resource_key VARCHAR PRIMARY KEY, content_hash VARCHAR, source_checksum VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS codes (code VARCHAR PRIMARY KEY, display VARCHAR)",
    """CREATE TABLE IF NOT EXISTS imaging_studies (
        study_uid VARCHAR, series_uid VARCHAR, subject_id VARCHAR, time TIMESTAMP, modality VARCHAR,
        body_site VARCHAR, PRIMARY KEY (study_uid, series_uid))""",
]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CohortError(RuntimeError):
    """A cohort that cannot be opened or written as asked."""


class Cohort:
    """Open (or create) a cohort folder. Use as a context manager or call `close()`."""

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
    ) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.exists():
            if not create or read_only:
                raise CohortError(f"no cohort at {self.root} (missing {MANIFEST})")
            self.root.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(manifest), read_only=read_only)
        meta = self._read_meta()
        if not read_only and meta.get("schema_version") != SCHEMA_VERSION:
            with self.transaction():  # new cohort, or one from an older biomm: create what is missing
                for ddl in _DDL:
                    self.con.execute(ddl)
                self.set_meta("schema_version", SCHEMA_VERSION)
        stored = meta.get("deid")
        if stored is None:
            if read_only:
                raise CohortError(f"cohort {self.root} has no manifest metadata")
            enabled = True if deid is None else deid
            with self.transaction():
                self.set_meta("deid", "on" if enabled else "off")
                self.set_meta("created_at", _now().isoformat())
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
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> "Cohort":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def _read_meta(self) -> dict[str, str]:
        """All of the meta table in one query; empty for a new manifest."""
        try:
            return dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        except duckdb.CatalogException:
            return {}

    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    @property
    def deid_enabled(self) -> bool:
        return self.deid.enabled

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def relative(self, path: str | Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    # ------------------------------------------------------------------ sources (idempotency)
    def source_done(self, checksum: str, modality: str) -> bool:
        row = self.con.execute(
            "SELECT 1 FROM sources WHERE source_checksum = ? AND modality = ?", [checksum, modality]
        ).fetchone()
        return row is not None

    def mark_source(self, checksum: str, modality: str, source_path: str, n_records: int, n_quarantined: int) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?)",
            [checksum, modality, source_path, n_records, n_quarantined, _now()],
        )

    # ------------------------------------------------------------------ subjects and records
    def ensure_subject(self, subject_id: str, kind: str, date_shift_days: int, created_by: str) -> None:
        self.con.execute(
            "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?, ?, ?)",
            [subject_id, kind, date_shift_days, created_by, _now()],
        )
        self.con.execute(
            "INSERT OR IGNORE INTO splits VALUES (?, ?)", [subject_id, split_lib.split_of(subject_id)]
        )

    def subject_shift(self, subject_id: str) -> int | None:
        row = self.con.execute("SELECT date_shift_days FROM subjects WHERE subject_id = ?", [subject_id]).fetchone()
        return None if row is None else int(row[0])

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
        self.con.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [record_id, subject_id, modality, path, checksum, source_path, source_checksum, n_items,
             json.dumps(provenance or {}, default=str), _now()],
        )

    def records(self, modality: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM records" + (" WHERE modality = ?" if modality else "") + " ORDER BY record_id"
        cur = self.con.execute(sql, [modality] if modality else [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def subjects(self, kind: str | None = None) -> list[str]:
        sql = "SELECT subject_id FROM subjects" + (" WHERE kind = ?" if kind else "") + " ORDER BY subject_id"
        return [r[0] for r in self.con.execute(sql, [kind] if kind else []).fetchall()]

    def split_subjects(self, split: str) -> list[str]:
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

    def labels(self, name: str) -> list[tuple[str, str, datetime | None]]:
        return self.con.execute("SELECT subject_id, value, time FROM labels WHERE name = ? ORDER BY subject_id, time",
                                [name]).fetchall()

    def code_displays(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT code, display FROM codes").fetchall())

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
    ) -> str:
        """Keep bad input: a raw copy (the whole file, or `payload` for one bad record) plus reason.json.

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
        label = self.source_label(source_path, sha256_file(source_path) if source_path.is_file() else digest)
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
            [qid, modality, label, self.relative(stored), record, field, reason, _now()],
        )
        return qid

    def quarantined(self) -> list[dict[str, Any]]:
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
