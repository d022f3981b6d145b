"""The EHR reader's manifest tables: FHIR resource keys with their content hash (the duplicate check
across runs) and the display names of codes."""
from __future__ import annotations

from typing import Mapping, Sequence

import pyarrow as pa

from biomm.store.cohort import Cohort


def has_resources(cohort: Cohort) -> bool:
    """Whether any FHIR resource was ingested into the cohort."""
    return cohort.con.execute("SELECT count(*) FROM fhir_resources").fetchall()[0][0] > 0


def known_resources(cohort: Cohort, keys: Sequence[str]) -> dict[str, str]:
    """Content hashes of those of the pseudonymous resource `keys` the cohort already holds."""
    if not keys:
        return {}
    con = cohort.con
    con.register("incoming_keys", pa.table({"resource_key": list(keys)}))
    try:
        return dict(con.execute(
            "SELECT f.resource_key, f.content_hash FROM fhir_resources f JOIN incoming_keys k USING (resource_key)"
        ).fetchall())
    finally:
        con.unregister("incoming_keys")


def add_resources(cohort: Cohort, hashes: Mapping[str, str]) -> None:
    """Record resources (key -> content hash) as ingested; keys already recorded are kept."""
    cohort.insert_rows("fhir_resources", {"resource_key": list(hashes), "content_hash": list(hashes.values()),
                                          "source_checksum": [""] * len(hashes)})


def add_codes(cohort: Cohort, displays: Mapping[str, str]) -> None:
    """Display names of MEDS codes (`SNOMED/44054006` -> 'Diabetes'); the first one recorded for a code stays."""
    cohort.insert_rows("codes", {"code": list(displays), "display": list(displays.values())})
