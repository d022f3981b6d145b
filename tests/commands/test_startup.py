"""`biomm --help` and `biomm cohort info` start without the heavy libraries (torch, scanpy, monai,
transformers, ...): they are imported where they are used, never by the CLI's top level."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "scanpy", "anndata", "monai", "transformers", "lightning", "sklearn", "pydicom", "pyarrow")

PROBE = """
import contextlib, io, json, sys
from typer.main import get_command
from biomm.cli import app
with contextlib.redirect_stdout(io.StringIO()):
    try:
        get_command(app).main(sys.argv[1:], standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_library():
    assert _heavy_after("--help") == []


def test_cohort_info_imports_no_heavy_library(clinical_cohort):
    assert _heavy_after("cohort", "info", str(clinical_cohort), "--json") == []
