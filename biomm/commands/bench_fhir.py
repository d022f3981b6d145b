"""`biomm bench ingest-fhir`."""
from __future__ import annotations

import typer

from biomm.commands.apps import bench_app
from biomm.commands.common import dump_json


@bench_app.command("ingest-fhir")
def bench_ingest_fhir(repeats: int = typer.Option(3, help="Timed repeats (best is kept)")) -> None:
    """FHIR ingest resources/s against fhir.resources.R4B validation, and peak RSS at 1x and 4x input."""
    from biomm.bench.ingest_fhir import run

    dump_json(run(repeats))
