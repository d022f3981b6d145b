"""MEDS v0.4 on disk: a cohort's EHR written as a MEDS dataset, and the rules a MEDS dataset is checked
against before a cohort reads one.

The cohort keeps its own layout (string pseudonyms, `ehr/events/*.parquet` with a `unit` column); a MEDS
dataset is written from it by `export_meds` (`biomm export meds COHORT OUT`):

    data/<k>.parquet                 events, each subject in one shard (bucket = id mod shards), rows sorted
                                     by (subject_id, time with static rows first); subject_id int64,
                                     numeric_value float32, text_value large_string, `unit` as an extension
    metadata/codes.parquet           every code of the data with its description (the cohort's displays)
    metadata/subject_splits.parquet  train / tuning / held_out (the cohort's train / val / test)
    metadata/dataset.json            name, versions, created_at, `other_extension_columns: ["unit"]`
    labels/<task>/labels.parquet     task labels (subject_id, prediction_time, boolean_value)
    .biomm_export.json               what each shard was built from, so the next export rewrites only
                                     the shards whose subjects changed

The export is built in a temporary folder beside OUT and swapped in at the end (unchanged shards are
hard-linked from the previous export), so OUT is always a whole dataset. MEDS subject ids are int64: a
cohort pseudonym `P<16 hex>` (an HMAC-SHA256 of the source id under the cohort key) maps to its first 63
bits, a decimal id (a cohort made without de-identification) to itself, anything else to 63 bits of an
HMAC under the cohort key; a collision is an error, never a silent merge.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomm.store.cohort import Cohort
from biomm.store.deid import Deidentifier
from biomm.store.events import read_events, read_notes, code_statistics

MEDS_VERSION = "0.4.1"
STATE_FILE = ".biomm_export.json"
STATE_VERSION = 1
SUBJECTS_PER_SHARD = 10_000  # default shard count: one shard per this many subjects
NOTE_PREFIX = "NOTE/"  # notes are exported (on request) as events `NOTE/<kind>` with the text in text_value

DATA_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us")),
    pa.field("code", pa.string(), nullable=False),
    pa.field("numeric_value", pa.float32()),
    pa.field("text_value", pa.large_string()),
    pa.field("unit", pa.string()),
])
"""The data shards biomm writes: the MEDS v0.4 columns plus the `unit` extension column."""
CODES_SCHEMA = pa.schema([("code", pa.string()), ("description", pa.string()), ("parent_codes", pa.list_(pa.string()))])
SPLITS_SCHEMA = pa.schema([pa.field("subject_id", pa.int64(), nullable=False), pa.field("split", pa.string(), nullable=False)])
LABEL_SCHEMA = pa.schema([pa.field("subject_id", pa.int64(), nullable=False),
                          pa.field("prediction_time", pa.timestamp("us"), nullable=False),
                          pa.field("boolean_value", pa.bool_(), nullable=False)])
TO_MEDS_SPLIT = {"train": "train", "val": "tuning", "test": "held_out"}
FROM_MEDS_SPLIT = {v: k for k, v in TO_MEDS_SPLIT.items()}
_PSEUDONYM = re.compile(r"^P[0-9a-f]{16}$")
_INT63 = (1 << 63) - 1


class MedsError(ValueError):
    """A MEDS dataset (or export target) that breaks a rule: names the file and the rule."""

    def __init__(self, path: str | Path, rule: str):
        self.path, self.rule = str(path), rule
        super().__init__(f"{path}: {rule}")


# ---------------------------------------------------------------------------------------- subject ids
def meds_subject_id(deid: Deidentifier, subject_id: str) -> int:
    """The int64 MEDS id (in [0, 2**63)) of a cohort subject id (see the module doc for the three cases)."""
    if _PSEUDONYM.match(subject_id):
        return int(subject_id[1:], 16) >> 1
    if subject_id.isdigit() and int(subject_id) <= _INT63:
        return int(subject_id)
    digest = hmac.new(deid.key, f"meds\x00{subject_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def meds_subject_ids(deid: Deidentifier, subject_ids: Iterable[str]) -> dict[str, int]:
    """Cohort subject id -> MEDS int64 id for every id; raises MedsError when two ids map to one."""
    out = {s: meds_subject_id(deid, s) for s in subject_ids}
    if len(set(out.values())) != len(out):
        seen: dict[int, str] = {}
        for s, i in out.items():
            if i in seen:
                raise MedsError("subject ids", f"subjects {seen[i]} and {s} map to the same MEDS id {i}; "
                                "export refused rather than merging them")
            seen[i] = s
    return out


def map_ids(column: pa.ChunkedArray | pa.Array, mapping: Mapping[str, int]) -> pa.Array:
    """A string subject-id column [N] mapped to its int64 MEDS ids [N] (every id must be in `mapping`)."""
    keys = pa.array(list(mapping), pa.string())
    values = pa.array(list(mapping.values()), pa.int64())
    idx = pc.index_in(column, value_set=keys)
    if idx.null_count:
        raise MedsError("subject ids", "an event's subject is not among the exported subjects")
    return pc.take(values, idx)


# ---------------------------------------------------------------------------------------- export
@dataclass
class LabelRows:
    """One task's labels to export: cohort subject ids [N], prediction times [N] (datetime64[us]), booleans [N]."""

    subject_ids: Sequence[str]
    prediction_times: np.ndarray
    values: np.ndarray


@dataclass
class ExportSummary:
    """What one `export_meds` run wrote."""

    out: str
    subjects: int = 0
    events: int = 0
    codes: int = 0
    shards: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dict(self.__dict__)


def _fingerprints(cohort: Cohort, buckets: Mapping[int, list[str]], modalities: list[str], notes: bool) -> dict[int, str]:
    """A hash per shard of what its subjects' records are (ids, checksums, counts): equal hash, equal shard."""
    rows = cohort.con.execute(
        "SELECT subject_id, record_id, checksum, n_items FROM records WHERE modality IN (SELECT unnest(?)) "
        "ORDER BY subject_id, record_id", [modalities]).fetchall()
    per_subject: dict[str, list[str]] = {}
    for sid, rid, checksum, n in rows:
        per_subject.setdefault(sid, []).append(f"{rid}|{checksum}|{n}")
    out = {}
    for k, subjects in buckets.items():
        h = hashlib.sha256(f"v{STATE_VERSION}|notes={notes}".encode())
        for s in subjects:
            h.update(f"\n{s}:".encode() + ";".join(per_subject.get(s, [])).encode())
        out[k] = h.hexdigest()
    return out


def _read_state(out: Path) -> dict[str, Any]:
    state = out / STATE_FILE
    if not out.exists():
        return {}
    if not state.exists():
        if any(out.iterdir()):
            raise MedsError(out, "exists and is not a biomm MEDS export (no .biomm_export.json); "
                            "choose an empty or new folder")
        return {}
    return json.loads(state.read_text())


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _shard_table(cohort: Cohort, subjects: list[str], ids: Mapping[str, int], notes: bool) -> pa.Table:
    """The MEDS rows of `subjects`: their events (and notes), sorted by (MEDS id, time with static rows first)."""
    events = read_events(cohort.root, subjects, columns=("subject_id", "time", "code", "numeric_value", "text_value", "unit"))
    parts = []
    if events is not None and events.num_rows:
        parts.append(pa.table({
            "subject_id": map_ids(events.column("subject_id"), ids), "time": events.column("time"),
            "code": events.column("code"), "numeric_value": events.column("numeric_value").cast(pa.float32()),
            "text_value": events.column("text_value").cast(pa.large_string()), "unit": events.column("unit"),
        }, schema=DATA_SCHEMA))
    if notes:
        rows = read_notes(cohort.root, subjects, kinds=True)
        if rows:
            parts.append(pa.table({
                "subject_id": map_ids(pa.array([r[0] for r in rows], pa.string()), ids),
                "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                "code": [NOTE_PREFIX + (r[3] or "note") for r in rows],
                "numeric_value": pa.nulls(len(rows), pa.float32()),
                "text_value": pa.array([r[2] for r in rows], pa.large_string()),
                "unit": pa.nulls(len(rows), pa.string()),
            }, schema=DATA_SCHEMA))
    if not parts:
        return DATA_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    # time order within a subject (static rows first), then a stable sort by the int id keeps it
    t = pc.fill_null(table.column("time").cast(pa.int64()), np.iinfo(np.int64).min)
    order = np.lexsort((t.to_numpy(), table.column("subject_id").to_numpy()))
    return table.take(pa.array(order))


def export_meds(cohort: Cohort, out: str | Path, *, shards: int | None = None, notes: bool = False,
                labels: Mapping[str, LabelRows] | None = None, dataset_name: str | None = None) -> ExportSummary:
    """Write (or bring up to date) the MEDS v0.4 dataset of the cohort's EHR at `out`; see the module doc.

    `shards`: number of data shards (default: kept from the previous export, else one per 10,000
    subjects); `notes`: also export note text as `NOTE/<kind>` events (free text: off by default);
    `labels`: task name -> its labels, written as MEDS label files (earlier label files are kept)."""
    from biomm import __version__

    out = Path(out)
    state = _read_state(out)
    modalities = ["ehr", "text"] if notes else ["ehr"]
    subjects = sorted(cohort.subjects_with_any(modalities))
    ids = meds_subject_ids(cohort.deid, subjects)
    n_shards = shards or state.get("shards") or max(1, -(-len(subjects) // SUBJECTS_PER_SHARD))
    buckets: dict[int, list[str]] = {}
    for s in subjects:
        buckets.setdefault(ids[s] % n_shards, []).append(s)
    prints = _fingerprints(cohort, buckets, modalities, notes)
    old = state.get("shard_fingerprints", {}) if state.get("shards") == n_shards else {}
    summary = ExportSummary(out=str(out), subjects=len(subjects), shards=len(buckets))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "data").mkdir(parents=True)
        (tmp / "metadata").mkdir()
        codes: set[str] = set()
        for k in sorted(buckets):
            name = f"data/{k}.parquet"
            if old.get(str(k)) == prints[k] and (out / name).exists():
                _link_or_copy(out / name, tmp / name)
                summary.shards_reused += 1
                continue
            table = _shard_table(cohort, buckets[k], ids, notes)
            pq.write_table(table, tmp / name, compression="zstd")
            summary.shards_written += 1
        for k in sorted(buckets):  # counts and codes from the shards themselves (reused ones included)
            f = pq.read_table(tmp / f"data/{k}.parquet", columns=["code"])
            summary.events += f.num_rows
            codes.update(pc.unique(f.column("code")).to_pylist())
        _write_codes(cohort, tmp / "metadata" / "codes.parquet", codes)
        summary.codes = len(codes)
        split_of = cohort.split_map()
        splits = [TO_MEDS_SPLIT.get(split_of.get(s, "train"), "train") for s in subjects]
        pq.write_table(pa.table({"subject_id": pa.array([ids[s] for s in subjects], pa.int64()), "split": splits},
                                schema=SPLITS_SCHEMA), tmp / "metadata" / "subject_splits.parquet")
        summary.splits = {v: splits.count(v) for v in TO_MEDS_SPLIT.values()}
        version = hashlib.sha256("".join(prints[k] for k in sorted(prints)).encode()).hexdigest()[:16]
        meta = {
            "dataset_name": dataset_name or cohort.root.resolve().name, "dataset_version": version,
            "etl_name": "biomm export meds", "etl_version": __version__, "meds_version": MEDS_VERSION,
            "created_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds"),
            "description_uri": "biomm cohort export: pseudonymous subject ids, shifted dates",
            "other_extension_columns": ["unit"],
        }
        (tmp / "metadata" / "dataset.json").write_text(json.dumps(meta, indent=2))
        label_counts = _write_labels(tmp, out, labels or {}, ids)
        summary.labels = label_counts
        (tmp / STATE_FILE).write_text(json.dumps({
            "state_version": STATE_VERSION, "shards": n_shards, "notes": notes,
            "shard_fingerprints": {str(k): v for k, v in prints.items()},
            "labels": sorted(label_counts)}, indent=2))
        _swap(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write_codes(cohort: Cohort, path: Path, codes: set[str]) -> None:
    displays = cohort.code_displays()
    names = sorted(codes)
    desc = [displays.get(c) or (f"note ({c[len(NOTE_PREFIX):]})" if c.startswith(NOTE_PREFIX) else None) for c in names]
    pq.write_table(pa.table({"code": names, "description": desc, "parent_codes": pa.nulls(len(names), pa.list_(pa.string()))},
                            schema=CODES_SCHEMA), path)


def _write_labels(tmp: Path, out: Path, labels: Mapping[str, LabelRows], ids: Mapping[str, int]) -> dict[str, int]:
    """New label files into `tmp/labels/<task>/`, earlier ones of other tasks carried over; rows per task."""
    counts: dict[str, int] = {}
    old = out / "labels"
    for folder in sorted(old.iterdir()) if old.exists() else ():
        if folder.is_dir() and folder.name not in labels:
            for f in folder.glob("*.parquet"):
                _link_or_copy(f, tmp / "labels" / folder.name / f.name)
            counts[folder.name] = pq.read_metadata(folder / "labels.parquet").num_rows if (folder / "labels.parquet").exists() else 0
    for task, rows in labels.items():
        if not re.match(r"^[A-Za-z0-9_.-]+$", task):
            raise MedsError(task, "a task name may hold only letters, digits, '_', '.' and '-'")
        sids = list(rows.subject_ids)
        table = pa.table({
            "subject_id": map_ids(pa.array(sids, pa.string()), ids) if sids else pa.array([], pa.int64()),
            "prediction_time": pa.array(np.asarray(rows.prediction_times, "datetime64[us]"), pa.timestamp("us")),
            "boolean_value": pa.array(np.asarray(rows.values).astype(bool)),
        }, schema=LABEL_SCHEMA)
        order = np.lexsort((table.column("prediction_time").cast(pa.int64()).to_numpy(), table.column("subject_id").to_numpy()))
        folder = tmp / "labels" / task
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(pa.array(order)), folder / "labels.parquet")
        counts[task] = table.num_rows
    return counts


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished export `tmp` in place of `out` (two renames; the old export is removed after)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reading MEDS
@dataclass
class MedsDataset:
    """A MEDS dataset that passed `check_meds`: its shards, version, metadata and the columns to read."""

    root: Path
    version: str  # "0.4" or "0.3"
    shards: list[Path]
    subject_column: str  # `subject_id` (v0.3.0 datasets: `patient_id`)
    metadata: dict[str, Any]
    descriptions: dict[str, str]
    splits: dict[int, str]  # MEDS subject id -> MEDS split name
    subjects: dict[Path, np.ndarray]  # shard -> its distinct subject ids
    rows: int = 0


def _require(root: Path, rel: str, rule: str) -> Path:
    path = root / rel
    if not path.exists():
        raise MedsError(path, f"missing metadata file ({rule})")
    return path


def _version(meta: Mapping[str, Any]) -> str:
    v = str(meta.get("meds_version") or "")
    return "0.3" if v.startswith("0.3") or v.startswith("0.2") else "0.4"


def check_meds(root: str | Path) -> MedsDataset:
    """Check a MEDS dataset (v0.4, or v0.3 through a shim) without changing anything; raises MedsError naming the
    file and the rule: metadata files present, int subject ids, rows of a subject contiguous and sorted by
    time (static rows first), each subject in one shard."""
    root = Path(root)
    if not root.is_dir():
        raise MedsError(root, "not a folder (a MEDS dataset is a folder with data/ and metadata/)")
    meta_path = _require(root, "metadata/dataset.json", "MEDS requires metadata/dataset.json")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise MedsError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise MedsError(meta_path, "must hold a JSON object")
    version = _version(meta)
    codes_path = _require(root, "metadata/codes.parquet", "MEDS requires metadata/codes.parquet listing every code")
    codes = pq.read_table(codes_path)
    if "code" not in codes.column_names:
        raise MedsError(codes_path, "has no `code` column")
    desc = codes.column("description").to_pylist() if "description" in codes.column_names else [None] * codes.num_rows
    descriptions = {c: d for c, d in zip(codes.column("code").to_pylist(), desc) if c is not None and d}
    shards = sorted((root / "data").rglob("*.parquet")) if (root / "data").is_dir() else []
    if not shards:
        raise MedsError(root / "data", "no data shards (MEDS keeps events in data/**/*.parquet)")
    first = pq.read_schema(shards[0])
    subject_column = "subject_id" if "subject_id" in first.names or version == "0.4" else "patient_id"
    owner: dict[int, Path] = {}
    subjects: dict[Path, np.ndarray] = {}
    total = 0
    for shard in shards:
        uniq, n = _check_shard(shard, subject_column)
        total += n
        for sid in uniq.tolist():
            prior = owner.setdefault(sid, shard)
            if prior != shard:
                raise MedsError(shard, f"subject {sid} is also in {prior.relative_to(root)}; MEDS keeps each "
                                "subject in one shard")
        subjects[shard] = uniq
    splits = _read_splits(root, version)
    return MedsDataset(root, version, shards, subject_column, meta, descriptions, splits, subjects, total)


def _check_shard(shard: Path, subject_column: str) -> tuple[np.ndarray, int]:
    """(distinct subject ids, rows) of one shard after its rules are checked."""
    schema = pq.read_schema(shard)
    for col in (subject_column, "time", "code"):
        if col not in schema.names:
            raise MedsError(shard, f"has no `{col}` column (MEDS requires subject_id, time, code)")
    if not pa.types.is_integer(schema.field(subject_column).type):
        raise MedsError(shard, f"column {subject_column} is {schema.field(subject_column).type}, not an integer "
                        "(MEDS subject ids are int64)")
    if not pa.types.is_timestamp(schema.field("time").type):
        raise MedsError(shard, f"column time is {schema.field('time').type}, not a timestamp")
    t = pq.read_table(shard, columns=[subject_column, "time"])
    sid_col = t.column(subject_column)
    if sid_col.null_count:
        raise MedsError(shard, f"column {subject_column} holds nulls (every row needs a subject id)")
    if pq.read_table(shard, columns=["code"]).column("code").null_count:
        raise MedsError(shard, "column code holds nulls (every row needs a code)")
    sid = sid_col.to_numpy().astype(np.int64)
    time = pc.fill_null(t.column("time").cast(pa.timestamp("us")).cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
    if len(sid) == 0:
        return np.zeros(0, np.int64), 0
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    uniq = np.unique(sid)
    if len(starts) != len(uniq):
        runs = np.sort(sid[starts])
        dup = int(runs[np.flatnonzero(runs[1:] == runs[:-1])[0]])
        raise MedsError(shard, f"rows are not sorted: subject {dup}'s rows are not contiguous (MEDS sorts each "
                        "shard by subject_id, then time)")
    same = sid[1:] == sid[:-1]
    back = np.flatnonzero(same & (time[1:] < time[:-1]))
    if len(back):
        i = int(back[0]) + 1
        raise MedsError(shard, f"rows are not sorted by time: row {i} of subject {int(sid[i])} is earlier than the row "
                        "before it (MEDS sorts each subject's rows by time, static rows first)")
    return uniq, len(sid)


def _read_splits(root: Path, version: str) -> dict[int, str]:
    names = ["metadata/subject_splits.parquet"] + (["metadata/patient_splits.parquet"] if version == "0.3" else [])
    for rel in names:
        path = root / rel
        if path.exists():
            t = pq.read_table(path)
            col = "subject_id" if "subject_id" in t.column_names else "patient_id"
            if col not in t.column_names or "split" not in t.column_names:
                raise MedsError(path, "needs columns subject_id and split")
            if not pa.types.is_integer(t.schema.field(col).type):
                raise MedsError(path, f"column {col} is {t.schema.field(col).type}, not an integer")
            return dict(zip(t.column(col).to_pylist(), t.column("split").to_pylist()))
    return {}


def read_meds_shard(ds: MedsDataset, shard: Path) -> pa.Table:
    """One checked shard as the cohort's columns: subject_id (int64), time, code, numeric_value (float32),
    text_value (string), unit (string; null when the dataset has none). v0.3 names and types are shimmed."""
    schema = pq.read_schema(shard)
    t = pq.read_table(shard)
    n = t.num_rows
    unit = next((c for c in ("unit", "units") if c in schema.names), None)
    return pa.table({
        "subject_id": t.column(ds.subject_column).cast(pa.int64()),
        "time": t.column("time").cast(pa.timestamp("us")),
        "code": t.column("code").cast(pa.string()),
        "numeric_value": (t.column("numeric_value").cast(pa.float32()) if "numeric_value" in schema.names
                          else pa.nulls(n, pa.float32())),
        "text_value": (t.column("text_value").cast(pa.string()) if "text_value" in schema.names
                       else pa.nulls(n, pa.string())),
        "unit": t.column(unit).cast(pa.string()) if unit else pa.nulls(n, pa.string()),
    })


def add_splits(cohort: Cohort, splits: Mapping[str, str]) -> None:
    """Set the split (`train` / `val` / `test`) of many cohort subjects at once, replacing the hash split."""
    bad = {v for v in splits.values() if v not in ("train", "val", "test")}
    if bad:
        raise ValueError(f"splits must be train, val or test, not {sorted(bad)}")
    cohort.insert_rows("splits", {"subject_id": list(splits), "split": list(splits.values())}, replace=True)


def ehr_code_counts(cohort: Cohort) -> dict[str, int]:
    """Events per code in the cohort (for checks against an export)."""
    return {code: n for code, n, _, _ in code_statistics(cohort.root)}
