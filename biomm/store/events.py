"""The one reader of a cohort's EHR shards: MEDS events (`ehr/events/*.parquet`) and notes
(`ehr/notes/*.parquet`). Every part that reads events (the model's data, QA facts, the web page's
timeline, `cohort info`) goes through these functions, so the on-disk layout is known here only."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import pyarrow as pa

import duckdb

EVENT_COLUMNS = ("subject_id", "time", "code", "numeric_value")


def event_shards(root: str | Path) -> list[str]:
    """Paths of the cohort's event shards, sorted."""
    return sorted(str(p) for p in (Path(root) / "ehr" / "events").glob("*.parquet"))


def notes_shards(root: str | Path) -> list[str]:
    """Paths of the cohort's note shards, sorted."""
    return sorted(str(p) for p in (Path(root) / "ehr" / "notes").glob("*.parquet"))


def _subject_filter(con: duckdb.DuckDBPyConnection, subjects: Sequence[str] | None) -> str:
    """A WHERE clause keeping `subjects` (registered as a table on `con`); empty for all subjects."""
    if subjects is None:
        return ""
    import pyarrow as pa  # not at the top: `cohort info` reads events without it

    con.register("wanted_subjects", pa.table({"subject_id": [str(s) for s in subjects]}))
    return "WHERE subject_id IN (SELECT subject_id FROM wanted_subjects)"


def read_events(root: str | Path, subjects: Sequence[str] | None = None,
                columns: Sequence[str] = EVENT_COLUMNS) -> pa.Table | None:
    """Events of `subjects` (default: all) sorted by (subject, time with untimed static facts first, code);
    None when the cohort has no events."""
    shards = event_shards(root)
    if not shards:
        return None
    with duckdb.connect() as con:
        where = _subject_filter(con, subjects)
        return con.sql(f"SELECT {', '.join(columns)} FROM read_parquet({shards!r}) {where} "
                       "ORDER BY subject_id, time NULLS FIRST, code").to_arrow_table()


def code_statistics(root: str | Path, subjects: Sequence[str] | None = None,
                    min_count: int = 1) -> list[tuple[str, int, float | None, float | None]]:
    """(code, count, mean and population std of numeric values) over the events of `subjects`, for codes seen
    at least `min_count` times, most frequent first."""
    shards = event_shards(root)
    if not shards:
        return []
    with duckdb.connect() as con:
        where = _subject_filter(con, subjects)
        return con.execute(
            f"SELECT code, count(*) n, avg(numeric_value), stddev_pop(numeric_value) FROM read_parquet({shards!r}) "
            f"{where} GROUP BY code HAVING count(*) >= ? ORDER BY n DESC, code", [min_count]).fetchall()


def read_notes(root: str | Path, subjects: Sequence[str] | None = None, kinds: bool = False) -> list[tuple]:
    """(subject_id, time, text) of every note of `subjects` (default: all), by subject and time; with
    `kinds`, (subject_id, time, text, kind)."""
    shards = notes_shards(root)
    if not shards:
        return []
    with duckdb.connect() as con:
        where = _subject_filter(con, subjects)
        kind = ", kind" if kinds else ""
        return con.execute(f"SELECT subject_id, time, text{kind} FROM read_parquet({shards!r}) {where} "
                           "ORDER BY subject_id, time NULLS FIRST").fetchall()


def event_summary(root: str | Path) -> dict[str, Any]:
    """Counts for `cohort info`: events, subjects with events, time range, events per code system, shards."""
    shards = event_shards(root)
    if not shards:
        return {"events": 0}
    with duckdb.connect() as con:
        src = f"read_parquet({shards!r})"
        total, subjects, tmin, tmax = con.execute(
            f"SELECT count(*), count(DISTINCT subject_id), min(time), max(time) FROM {src}").fetchone()
        systems = con.execute(
            f"SELECT split_part(code, '/', 1) AS system, count(*) AS n FROM {src} GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {"events": total, "subjects_with_events": subjects, "time_min": str(tmin), "time_max": str(tmax),
            "events_per_code_system": dict(systems), "shards": len(shards)}
