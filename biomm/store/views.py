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


def like_literal(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': its `%`, `_` and `\\` match themselves, not any text."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def subject_count(con) -> int:
    """How many subjects the cohort holds."""
    return con.execute("SELECT count(*) FROM subjects").fetchone()[0]


def age_band(birth, at) -> str | None:
    """A decade band ("40-49") of the age at `at` for a birth time (both datetimes; None when unknown)."""
    if birth is None or at is None:
        return None
    years = int((at - birth).days // 365.25)
    return "90+" if years >= 90 else f"{years // 10 * 10}-{years // 10 * 10 + 9}"


def _subject_facts(con, root: Path, subject_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Sex, age band (at the last event, or death), encounters and the last visit of each subject with EHR events."""
    if not subject_ids:
        return {}
    shards = [str(root / r[0]) for r in con.execute(
        "SELECT DISTINCT path FROM records WHERE modality = 'ehr' AND list_contains(?, subject_id) ORDER BY path",
        [subject_ids]).fetchall()]
    if not shards:
        return {}
    rows = con.execute(f"""
        SELECT subject_id, max(time) FILTER (WHERE code = 'MEDS_BIRTH') AS birth,
               max(split_part(code, '/', 2)) FILTER (WHERE code LIKE 'GENDER/%') AS sex,
               count(*) FILTER (WHERE ({EVENT_KIND_SQL}) = 'encounters') AS encounters,
               max(time) FILTER (WHERE ({EVENT_KIND_SQL}) = 'encounters') AS last_visit,
               coalesce(max(time) FILTER (WHERE code = 'MEDS_DEATH'), max(time)) AS last_event
        FROM read_parquet(?) WHERE list_contains(?, subject_id) GROUP BY 1""", [shards, subject_ids]).fetchall()
    return {sid: {"sex": sex, "age_band": age_band(birth, last), "encounters": int(n or 0),
                  "last_visit": _iso(visit)[:10] if visit else None}
            for sid, birth, sex, n, visit, last in rows}


def list_subjects(con, q: str | None, limit: int, offset: int, root: Path | None = None) -> dict[str, Any]:
    """A page of subjects (optionally those whose id contains `q`) with their modalities, and with `root`
    (the cohort folder) each one's sex, age band, number of encounters and last visit."""
    where, args = "", []
    if q:
        where, args = "WHERE s.subject_id ILIKE ? ESCAPE '\\'", [f"%{like_literal(q)}%"]
    total = con.execute(f"SELECT count(*) FROM subjects s {where}", args).fetchone()[0]
    cur = con.execute(
        f"""SELECT s.subject_id, s.kind, list(DISTINCT r.modality ORDER BY r.modality) AS modalities
            FROM subjects s LEFT JOIN records r USING (subject_id) {where}
            GROUP BY s.subject_id, s.kind ORDER BY s.subject_id LIMIT ? OFFSET ?""", args + [limit, offset])
    subjects = [{**r, "modalities": [m for m in (r["modalities"] or []) if m]} for r in _rows(cur)]
    if root is not None:
        facts = _subject_facts(con, root, [r["subject_id"] for r in subjects])
        subjects = [{**r, **facts.get(r["subject_id"], {})} for r in subjects]
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


ENCOUNTER_CLASSES = ("AMB", "IMP", "EMER", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR", "HH", "FLD")
# kind of an event from its code system (and, for SNOMED encounters, the encounter class in text_value);
# Condition and Procedure events are both SNOMED codes without values, so they share one kind
EVENT_KIND_SQL = f"""CASE
    WHEN code LIKE 'LOINC/%' THEN 'labs'
    WHEN code LIKE 'RXNORM/%' OR code LIKE 'CVX/%' THEN 'medications'
    WHEN code LIKE 'DCM/%' THEN 'images'
    WHEN code LIKE 'ENCOUNTER/%' OR text_value IN ({", ".join(f"'{c}'" for c in ENCOUNTER_CLASSES)}) THEN 'encounters'
    WHEN code IN ('MEDS_BIRTH', 'MEDS_DEATH') OR code LIKE 'GENDER/%' OR code LIKE 'RACE/%' OR code LIKE 'ETHNICITY/%'
        THEN 'demographics'
    ELSE 'conditions' END"""
EVENT_KINDS = ("encounters", "conditions", "medications", "labs", "images", "demographics")


def timeline(con, root: Path, subject_id: str, limit: int, offset: int, code: str | None,
             kind: str | None = None, newest_first: bool = False) -> dict[str, Any]:
    """Events in time order (oldest first, or `newest_first`; paged; optionally filtered by a code prefix and an
    event kind of EVENT_KINDS) with each code's description and kind, and the subject's notes."""
    subject_detail(con, root, subject_id)
    out: dict[str, Any] = {"subject_id": subject_id, "total": 0, "events": [], "notes": [], "by_system": {}}
    shards = [str(root / p) for p in _shards(con, subject_id, "ehr")]
    if shards:
        where, args = "subject_id = ?", [shards, subject_id]
        if code:
            where += " AND code ILIKE ? ESCAPE '\\'"
            args.append(f"{like_literal(code)}%")
        if kind:
            where += f" AND ({EVENT_KIND_SQL}) = ?"
            args.append(kind)
        out["total"] = con.execute(f"SELECT count(*) FROM read_parquet(?) WHERE {where}", args).fetchone()[0]
        order = "DESC" if newest_first else "ASC"
        cur = con.execute(
            f"""SELECT e.time, e.code, e.value, e.text, e.unit, e.kind, c.display AS description FROM (
                    SELECT time, code, numeric_value AS value, text_value AS text, unit, {EVENT_KIND_SQL} AS kind
                    FROM read_parquet(?) WHERE {where}) e LEFT JOIN codes c ON c.code = e.code
                ORDER BY e.time {order} NULLS LAST, e.code LIMIT ? OFFSET ?""", args + [limit, offset])
        out["events"] = [{**r, "time": _iso(r["time"])} for r in _rows(cur)]
        out["by_system"] = {s: {"count": n, "times": [_iso(t) for t in ts]} for s, n, ts in con.execute(
            """SELECT split_part(code, '/', 1), count(*), list(DISTINCT time ORDER BY time)[1:400]
               FROM read_parquet(?) WHERE subject_id = ? GROUP BY 1 ORDER BY 2 DESC""",
            [shards, subject_id]).fetchall()}
    notes = [str(root / p) for p in _shards(con, subject_id, "text")]
    if notes:
        cur = con.execute(f"SELECT time, kind, text FROM read_parquet(?) WHERE subject_id = ? "
                          f"ORDER BY time {'DESC' if newest_first else 'ASC'}", [notes, subject_id])
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
