"""`biomm bench scale` at a tiny capped size: the JSON has every cost's exponent, the PNG is written, and the
1% top-up re-ingests only the new sources and re-embeds only the new subjects."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from biomm.bench.scale import growth_exponent, make_patients


def test_growth_exponent_recovers_the_slope():
    sizes = [1, 4, 16, 64]
    assert growth_exponent(sizes, [2 * s for s in sizes]) == pytest.approx(1.0, abs=1e-6)
    assert growth_exponent(sizes, [3 * s ** 0.5 for s in sizes]) == pytest.approx(0.5, abs=1e-6)
    assert growth_exponent([1], [1.0]) is None


def test_copies_are_new_patients_in_a_permuted_order(tmp_path):
    files = make_patients(2, tmp_path / "p")
    assert len(files) == 500 and len({f.name for f in files}) == 500
    assert [f.name for f in files] != sorted(f.name for f in files)  # written in a permuted order
    assert not any("_" in f.name.split("_c")[0][7:] for f in files)  # names carry no patient name
    import gzip

    first = gzip.decompress(sorted(tmp_path.glob("p/*_c1_*"))[0].read_bytes())
    assert b"urn:uuid:c1-" in first


@pytest.mark.slow
def test_quick_bench_runs_end_to_end(tmp_path):
    from biomm.cli import app

    png = tmp_path / "scale.png"
    res = CliRunner().invoke(app, ["bench", "scale", "--scales", "1,2", "--cells", "300,600", "--patients", "30",
                                   "--work", str(tmp_path / "w"), "--png", str(png), "--train-steps", "4",
                                   "--query-seconds", "1", "--in-process"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert set(out["growth_exponents"]) >= {"fhir ingest", "dicom ingest", "omics ingest", "embed", "index build",
                                            "train step", "query p50"}
    assert all(v is not None for v in out["growth_exponents"].values())
    assert png.exists() and png.stat().st_size > 10_000
    inc = out["incremental"]
    assert inc["reingest"]["skipped"] == 60 and inc["reingest"]["subjects_added"] == inc["patients_added"] == 1
    assert inc["reembed"]["embedded"] == 1 and inc["reembed"]["subjects"] == 61
    assert out["rows"]["query"][-1]["errors"] == 0


def test_a_step_in_a_child_process_reports_its_own_peak_rss(tmp_path):
    from biomm.bench.scale import child

    files = make_patients(1, tmp_path / "p", base_patients=3)
    out = child("fhir", str(tmp_path / "p"), str(tmp_path / "cohort"))
    assert out["sources"] == len(files) == 3 and out["subjects_added"] == 3 and out["peak_rss_mib"] > 50
