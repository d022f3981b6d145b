"""The one per-source loop (seen -> checksum -> skip -> handle -> quarantine): on its own, and through two
readers (FASTA and DICOM) that share it."""
from __future__ import annotations

import pytest

from biomm.ingest.base import IngestError, IngestSummary, Source, for_each_source
from biomm.ingest.imaging import dicom
from biomm.ingest.sequence import fasta
from biomm.store.cohort import Cohort

from .imaging.dicom_fixtures import FAST, copy_as_new_series, dicom_file


def _files(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.txt").write_text("first")
    (folder / "b.txt").write_text("bad")
    (folder / "c.txt").write_text("third")
    (folder / "a_copy.txt").write_text("first")  # the same bytes again: unchanged, not handled twice
    return [folder / n for n in ("a.txt", "b.txt", "c.txt", "a_copy.txt")]


def _run(cohort_dir, files, handled):
    summary = IngestSummary(modality="test", cohort=str(cohort_dir))

    def handle(source: Source) -> None:
        if source.path.read_text() == "bad":
            raise IngestError(source.path, "bad on purpose", field="body")
        handled.append(source.path.name)
        c.mark_source(source.checksum, "test", source.label, 1, 0)

    with Cohort(cohort_dir) as c:
        for_each_source(c, "test", files, handle, summary, progress=False)
        return summary, c.quarantined()


def test_loop_quarantines_a_bad_source_goes_on_and_is_idempotent(tmp_path):
    files = _files(tmp_path)
    handled: list[str] = []
    s, quarantined = _run(tmp_path / "cohort", files, handled)
    assert handled == ["a.txt", "c.txt"]
    assert (s.sources_seen, s.sources_skipped_unchanged, s.quarantined) == (4, 1, 1)
    assert s.quarantine[0].reason == "bad on purpose" and s.quarantine[0].field == "body"
    assert [q["reason"] for q in quarantined] == ["bad on purpose"]
    again: list[str] = []
    s2, quarantined2 = _run(tmp_path / "cohort", files, again)
    assert again == [] and s2.sources_skipped_unchanged == s2.sources_seen == 4
    # reported again as still quarantined (issue 18), but not stored twice
    assert s2.quarantined == 1 and s2.quarantine[0].reason == "still quarantined: bad on purpose"
    assert len(quarantined2) == 1  # the bad source was marked done: not quarantined twice


def test_loop_reads_once_and_lets_bugs_through(tmp_path):
    files = _files(tmp_path)
    seen: list[bytes] = []
    s = IngestSummary(modality="test", cohort="x")
    with Cohort(tmp_path / "cohort") as c:
        for_each_source(c, "test", files[:1], lambda src: seen.append(src.data), s, read=True, progress=False)
        assert seen == [b"first"]

        def broken(source: Source) -> None:
            raise RuntimeError("a bug, not bad input")

        with pytest.raises(RuntimeError):
            for_each_source(c, "test", files[2:3], broken, s, progress=False)
        assert c.quarantined() == []


def _fasta_sources(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "one.fa").write_text(">s1\nACGTACGTAC\n>s2\nGGGTTTAAAC\n")
    (d / "bad.fa").write_text("no header line at all\n")
    (d / "two.fa").write_text(">s3\nTTTTGGGGCCCCAAAA\n")
    return [d / "one.fa", d / "bad.fa", d / "two.fa"]


def _dicom_sources(tmp_path):
    d = tmp_path / "src"
    one = copy_as_new_series(dicom_file("CT_small.dcm"), d / "one.dcm")
    (d / "bad.dcm").write_bytes(b"not a DICOM file")
    two = copy_as_new_series(dicom_file("MR_small.dcm"), d / "two.dcm")
    return [one, d / "bad.dcm", two]


@pytest.mark.parametrize("reader,sources,config,reason", [
    (fasta.ingest, _fasta_sources, {"alphabet": "dna"}, "not a readable FASTA file"),
    (dicom.ingest, _dicom_sources, FAST, "not a DICOM file"),
])
def test_readers_share_the_loop(tmp_path, reader, sources, config, reason):
    files = sources(tmp_path)
    s = reader(files, tmp_path / "cohort", config, progress=False)
    assert s.sources_seen == 3 and s.records_written == 2 and s.quarantined == 1
    assert reason in s.quarantine[0].reason
    again = reader(files, tmp_path / "cohort", config, progress=False)
    assert again.sources_skipped_unchanged == again.sources_seen == 3
    assert again.records_written == 0 and again.quarantined == 1  # still quarantined, reported again (issue 18)
    assert again.quarantine[0].reason.startswith("still quarantined: ") and again.exit_code == 3
    with Cohort(tmp_path / "cohort") as c:
        assert len(c.quarantined()) == 1 and len(c.records()) == 2


def test_every_reader_has_the_one_signature():
    import inspect

    from biomm.modalities import reader_specs

    for name, (spec, _) in reader_specs().items():
        params = inspect.signature(spec.reader(name)).parameters
        assert list(params) == ["sources", "cohort", "config", "progress"], name
        assert params["config"].default is None and params["progress"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert spec.reader_config(name).__name__.endswith("IngestConfig"), name
