"""The stored sequences of a cohort (`sequences/<sha16>.parquet`, one per FASTA source): reads and counts."""
from __future__ import annotations

from typing import Any

import pandas as pd

from biomm.store.cohort import Cohort

MODALITY = "sequence"


def sequence_files(cohort: Cohort) -> list[str]:
    """Paths of the cohort's sequence shards that exist, in record order."""
    files = [cohort.path(r["path"]) for r in cohort.records(MODALITY)]
    return [str(f) for f in files if f.exists()]


def read_sequences(cohort: Cohort) -> pd.DataFrame:
    """Every stored sequence of a cohort as one DataFrame, by source and sequence id (empty when none)."""
    files = sequence_files(cohort)
    if not files:
        return pd.DataFrame()
    return cohort.con.execute("SELECT * FROM read_parquet(?) ORDER BY source, sequence_id", [files]).df()


def sequence_hashes(cohort: Cohort) -> dict[str, str]:
    """sequence_id -> sha256 of every stored sequence (for duplicate ids across files)."""
    files = sequence_files(cohort)
    if not files:
        return {}
    return dict(cohort.con.execute("SELECT sequence_id, sha256 FROM read_parquet(?)", [files]).fetchall())


def sequence_counts(cohort: Cohort) -> dict[str, Any]:
    """Counts for `cohort info`: per alphabet (sequences, mean length), too long for the model, links by kind."""
    files = sequence_files(cohort)
    out: dict[str, Any] = {"sequences": 0, "by_alphabet": {}, "too_long": 0, "links": {}}
    if not files:
        return out
    for alpha, n, long_, mean_len in cohort.con.execute(
            "SELECT alphabet, count(*), sum(too_long::INT), avg(length) FROM read_parquet(?) GROUP BY 1 ORDER BY 1",
            [files]).fetchall():
        out["by_alphabet"][alpha] = {"sequences": n, "mean_length": round(float(mean_len), 1)}
        out["sequences"] += n
        out["too_long"] += int(long_ or 0)
    out["links"] = dict(cohort.con.execute(
        "SELECT coalesce(link_kind, 'none'), count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1", [files]).fetchall())
    return out
