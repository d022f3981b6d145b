"""The imaging_studies table: studies named by FHIR ImagingStudy resources, which link DICOM series to
the EHR subject they belong to."""
from __future__ import annotations

from typing import Mapping, Sequence

from biomm.store.cohort import Cohort

STUDY_COLUMNS = ("study_uid", "series_uid", "subject_id", "time", "modality", "body_site")


def add_studies(cohort: Cohort, rows: Sequence[Mapping]) -> None:
    """Record (pseudonymous) studies and series of subjects: dicts with `STUDY_COLUMNS`; a series seen again is replaced."""
    cohort.insert_rows("imaging_studies", {k: [r[k] for r in rows] for k in STUDY_COLUMNS}, replace=True)


def study_subjects(cohort: Cohort, study_uids: Sequence[str]) -> dict[str, str]:
    """{study uid: subject} for those of `study_uids` (remapped UIDs) an ImagingStudy named: one query for all."""
    rows = cohort.con.execute(
        "SELECT DISTINCT study_uid, subject_id FROM imaging_studies WHERE study_uid IN (SELECT unnest(?)) "
        "AND subject_id IS NOT NULL", [list(dict.fromkeys(study_uids))]).fetchall()
    return {uid: sid for uid, sid in sorted(rows)}
