"""DICOM discovery (issue 18): sidecars next to the images are not quarantined as "not a DICOM file", and
of a truncated file and its intact twin (same SOPInstanceUID) the intact one is kept whatever the order."""
from __future__ import annotations

import shutil

import pytest

from biomm.ingest.imaging import dicom
from biomm.ingest.imaging.reader import discover

from .dicom_fixtures import FAST, copy_as_new_series, dicom_file


def test_sidecars_are_skipped_in_folders_but_read_when_named(tmp_path):
    src = tmp_path / "xrays"
    copy_as_new_series(dicom_file("CT_small.dcm"), src / "img1.dcm")
    (src / "linkage.csv").write_text("study_uid,file\n1.2.3,img1.dcm\n")
    (src / "README.md").write_text("demo images")
    files, _ = discover([src])
    assert [f.name for f in files] == ["img1.dcm"]
    s = dicom.ingest([src], tmp_path / "cohort", FAST, progress=False)
    assert s.records_written == 1 and s.quarantined == 0
    named = dicom.ingest([src / "linkage.csv"], tmp_path / "cohort", FAST, progress=False)
    assert named.quarantined == 1 and "not a DICOM file" in named.quarantine[0].reason


@pytest.mark.parametrize("order", [("a_truncated.dcm", "b_intact.dcm"), ("b_truncated.dcm", "a_intact.dcm")])
def test_truncated_twin_loses_whatever_the_order(tmp_path, order):
    truncated, intact = order
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(dicom_file("MR_truncated.dcm"), src / truncated)
    shutil.copy(dicom_file("MR_small.dcm"), src / intact)
    s = dicom.ingest([src], tmp_path / "cohort", FAST, progress=False)
    assert (s.records_written, s.quarantined, s.items_skipped_duplicate) == (1, 0, 1), s.quarantine
