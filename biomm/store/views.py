"""Read-only views of the cohort for the web page: subjects, one subject's modalities, its timeline and
images. Every function takes an open read-only connection from `connect(root)` (SQL stays in the store)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

NOTE_CHARS = 2000


class NotFound(LookupError):
    """An id the cohort does not hold (maps to 404)."""


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the cohort manifest."""
    return duckdb.connect(str(root / "cohort.duckdb"), read_only=True)


def _rows(cur) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def subject_count(con) -> int:
    """How many subjects the cohort holds."""
    return con.execute("SELECT count(*) FROM subjects").fetchone()[0]


def list_subjects(con, q: str | None, limit: int, offset: int) -> dict[str, Any]:
    """A page of subjects (optionally those whose id contains `q`) with their modalities."""
    where, args = "", []
    if q:
        where, args = "WHERE s.subject_id ILIKE ?", [f"%{q}%"]
    total = con.execute(f"SELECT count(*) FROM subjects s {where}", args).fetchone()[0]
    cur = con.execute(
        f"""SELECT s.subject_id, s.kind, list(DISTINCT r.modality ORDER BY r.modality) AS modalities
            FROM subjects s LEFT JOIN records r USING (subject_id) {where}
            GROUP BY s.subject_id, s.kind ORDER BY s.subject_id LIMIT ? OFFSET ?""", args + [limit, offset])
    subjects = [{**r, "modalities": [m for m in (r["modalities"] or []) if m]} for r in _rows(cur)]
    return {"total": total, "subjects": subjects}


def _shards(con, subject_id: str, modality: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT DISTINCT path FROM records WHERE subject_id = ? AND modality = ? ORDER BY path",
        [subject_id, modality]).fetchall()]


def subject_detail(con, root: Path, subject_id: str) -> dict[str, Any]:
    """One subject: kind, split, records per modality, labels and its event span; NotFound if unknown."""
    row = con.execute("SELECT kind FROM subjects WHERE subject_id = ?", [subject_id]).fetchone()
    if row is None:
        raise NotFound(f"unknown subject '{subject_id}'")
    modalities = {m: {"records": n, "items": int(items or 0)} for m, n, items in con.execute(
        "SELECT modality, count(*), sum(n_items) FROM records WHERE subject_id = ? GROUP BY 1 ORDER BY 1",
        [subject_id]).fetchall()}
    split = con.execute("SELECT split FROM splits WHERE subject_id = ?", [subject_id]).fetchone()
    labels = {n: v for n, v in con.execute(
        "SELECT name, value FROM labels WHERE subject_id = ? ORDER BY name", [subject_id]).fetchall()}
    out = {"subject_id": subject_id, "kind": row[0], "split": split[0] if split else None,
           "modalities": modalities, "labels": labels}
    shards = [str(root / p) for p in _shards(con, subject_id, "ehr")]
    if shards:
        n, t0, t1 = con.execute(
            "SELECT count(*), min(time), max(time) FROM read_parquet(?) WHERE subject_id = ?",
            [shards, subject_id]).fetchone()
        out["events"] = {"count": n, "first": _iso(t0), "last": _iso(t1)}
    return out


def _iso(t) -> str | None:
    return None if t is None else t.isoformat()


def timeline(con, root: Path, subject_id: str, limit: int, offset: int, code: str | None) -> dict[str, Any]:
    """Events in time order (paged, optionally filtered by a code prefix) and the subject's notes."""
    subject_detail(con, root, subject_id)
    out: dict[str, Any] = {"subject_id": subject_id, "total": 0, "events": [], "notes": [], "by_system": {}}
    shards = [str(root / p) for p in _shards(con, subject_id, "ehr")]
    if shards:
        where, args = "subject_id = ?", [shards, subject_id]
        if code:
            where += " AND code ILIKE ?"
            args.append(f"{code}%")
        out["total"] = con.execute(f"SELECT count(*) FROM read_parquet(?) WHERE {where}", args).fetchone()[0]
        cur = con.execute(
            f"""SELECT time, code, numeric_value AS value, text_value AS text, unit FROM read_parquet(?)
                WHERE {where} ORDER BY time, code LIMIT ? OFFSET ?""", args + [limit, offset])
        out["events"] = [{**r, "time": _iso(r["time"])} for r in _rows(cur)]
        out["by_system"] = {s: {"count": n, "times": [_iso(t) for t in ts]} for s, n, ts in con.execute(
            """SELECT split_part(code, '/', 1), count(*), list(DISTINCT time ORDER BY time)[1:400]
               FROM read_parquet(?) WHERE subject_id = ? GROUP BY 1 ORDER BY 2 DESC""",
            [shards, subject_id]).fetchall()}
    notes = [str(root / p) for p in _shards(con, subject_id, "text")]
    if notes:
        cur = con.execute("SELECT time, kind, text FROM read_parquet(?) WHERE subject_id = ? ORDER BY time",
                          [notes, subject_id])
        out["notes"] = [{**r, "time": _iso(r["time"]), "text": (r["text"] or "")[:NOTE_CHARS]} for r in _rows(cur)]
    return out


def images(con, subject_id: str) -> list[dict[str, Any]]:
    """The subject's imaging records with what the page shows; `provenance` is the record's own (for presets)."""
    if con.execute("SELECT 1 FROM subjects WHERE subject_id = ?", [subject_id]).fetchone() is None:
        raise NotFound(f"unknown subject '{subject_id}'")
    out = []
    for record_id, prov in con.execute(
            "SELECT record_id, provenance FROM records WHERE subject_id = ? AND modality = 'imaging' ORDER BY record_id",
            [subject_id]).fetchall():
        p = json.loads(prov or "{}")
        shape = p.get("shape") or []
        out.append({"record_id": record_id, "dicom_modality": p.get("dicom_modality"), "body_part": p.get("body_part"),
                    "study_date": p.get("study_date"), "shape": shape,
                    "slices": int(shape[3]) if len(shape) == 4 else 1, "provenance": p})
    return out


def image_record(con, record_id: str) -> tuple[str, dict[str, Any]]:
    """(path, provenance) of one imaging record; NotFound if unknown."""
    row = con.execute("SELECT path, provenance FROM records WHERE record_id = ? AND modality = 'imaging'",
                      [record_id]).fetchone()
    if row is None:
        raise NotFound(f"unknown image '{record_id}'")
    return row[0], json.loads(row[1] or "{}")
