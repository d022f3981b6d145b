"""`biomm run A.yaml B.yaml`: pipelines one after the other in one process; every file is checked before the
first step runs, and an unknown step kind is a one-line error naming its pipeline."""
from __future__ import annotations

from typer.testing import CliRunner

from biomm.cli import app


def _pipeline(path, name, workdir, kind="sequence_demo_data"):
    path.write_text(f"name: {name}\nworkdir: {workdir}\nsteps:\n  - kind: {kind}\n"
                    f"    with: {{out: \"{{workdir}}/fasta\", protein: null}}\n")
    return path


def test_two_pipelines_run_in_one_call(tmp_path):
    a = _pipeline(tmp_path / "a.yaml", "first", tmp_path / "wa")
    b = _pipeline(tmp_path / "b.yaml", "second", tmp_path / "wb")
    res = CliRunner().invoke(app, ["run", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "pipeline first finished" in res.output and "pipeline second finished" in res.output
    assert res.output.index("first finished") < res.output.index("second finished")
    for w in ("wa", "wb"):
        assert sorted(p.name for p in (tmp_path / w / "fasta" / "dna").iterdir()) == ["Mafk.fa", "Oct4.fa"]


def test_a_bad_later_pipeline_stops_the_run_before_any_step(tmp_path):
    a = _pipeline(tmp_path / "a.yaml", "first", tmp_path / "wa")
    b = _pipeline(tmp_path / "b.yaml", "second", tmp_path / "wb", kind="no_such_step")
    res = CliRunner().invoke(app, ["run", str(a), str(b)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pipeline second" in lines[0] and "no_such_step" in lines[0], res.output
    assert not (tmp_path / "wa").exists()  # nothing of the first pipeline ran
