"""The EHR reader's manifest tables: FHIR resource keys with their content hash (the duplicate check
across runs) and the display names of codes.

The resource table has no index on purpose: DuckDB keeps an ART index (a primary key) wholly in memory,
which grew the ingest's peak RSS with every resource ever ingested (about 70 bytes each, 5M resources at
16,000 patients). Lookups instead scan one BIGINT column (a 64-bit hash of the key) once per batch of
keys, which costs a few milliseconds per million rows, and check the full key of the few hits."""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import pyarrow as pa

from biomm.store.cohort import Cohort

RESOURCE_TABLE = "fhir_resource_keys"  # its DDL is in the EHR spec (biomm.modalities)
_LEGACY_TABLE = "fhir_resources"  # cohorts written before the index-free table: keyed VARCHAR PRIMARY KEY


def key_hash(key: str) -> int:
    """The 64-bit (signed) hash a resource key is looked up by; a hit is confirmed on the full key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def migrate_legacy(cohort: Cohort) -> None:
    """Move a cohort's resource keys from the old indexed table into the index-free one (once; idempotent)."""
    con = cohort.con
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                        [_LEGACY_TABLE]).fetchall()[0][0]
    if not found:
        return
    rows = con.execute(f"SELECT resource_key, content_hash, source_checksum FROM {_LEGACY_TABLE}").fetchall()
    with cohort.transaction():
        _insert(cohort, [r[0] for r in rows], [r[1] for r in rows], [r[2] or "" for r in rows])
        con.execute(f"DROP TABLE {_LEGACY_TABLE}")


def known_resources(cohort: Cohort, keys: Sequence[str]) -> dict[str, str]:
    """Content hashes of those of the pseudonymous resource `keys` the cohort already holds."""
    if not keys:
        return {}
    con = cohort.con
    con.register("incoming_keys", pa.table({"h": pa.array([key_hash(k) for k in keys], pa.int64())}))
    try:
        hits = [r[0] for r in con.execute(
            f"SELECT DISTINCT key_hash FROM {RESOURCE_TABLE} WHERE key_hash IN (SELECT h FROM incoming_keys)"
        ).fetchall()]
    finally:
        con.unregister("incoming_keys")
    if not hits:
        return {}
    wanted = set(keys)
    rows = con.execute(f"SELECT resource_key, content_hash FROM {RESOURCE_TABLE} WHERE key_hash IN "
                       f"(SELECT unnest(?::BIGINT[]))", [hits]).fetchall()
    return {k: c for k, c in rows if k in wanted}


def add_resources(cohort: Cohort, hashes: Mapping[str, str]) -> None:
    """Record new resources (key -> content hash) as ingested; the caller passes only keys not yet recorded
    (`known_resources`), as the table has no key constraint."""
    _insert(cohort, list(hashes), list(hashes.values()), [""] * len(hashes))


def _insert(cohort: Cohort, keys: list[str], contents: list[str], checksums: list[str]) -> None:
    if not keys:
        return
    con = cohort.con
    con.register("bulk_keys", pa.table({"key_hash": pa.array([key_hash(k) for k in keys], pa.int64()),
                                        "resource_key": keys, "content_hash": contents, "source_checksum": checksums}))
    try:
        con.execute(f"INSERT INTO {RESOURCE_TABLE} SELECT key_hash, resource_key, content_hash, source_checksum "
                    "FROM bulk_keys")
    finally:
        con.unregister("bulk_keys")


def add_codes(cohort: Cohort, displays: Mapping[str, str]) -> None:
    """Display names of MEDS codes (`SNOMED/44054006` -> 'Diabetes'); the first one recorded for a code stays."""
    cohort.insert_rows("codes", {"code": list(displays), "display": list(displays.values())})
