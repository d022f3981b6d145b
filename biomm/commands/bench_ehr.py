"""`biomm bench ehr` (the measurement lives in biomm.bench.ehr)."""
from __future__ import annotations

import typer

from biomm.commands.apps import bench_app
from biomm.commands.common import dump_json


@bench_app.command("ehr")
def bench_ehr(
    preset: str = typer.Option("small", help="EHR encoder size preset (tiny / small / base)"),
    batch_size: int = typer.Option(8, help="Subjects per step"),
    lengths: str = typer.Option("128,2048,8192", help="Context lengths (events), comma-separated"),
    threads: int = typer.Option(2, help="Intra-op threads of each child process"),
) -> None:
    """Print one JSON object: peak RSS and step time of the EHR encoder per context length (target: 8,192 events,
    batch 8, < 4 GiB)."""
    from biomm.bench.ehr import run

    dump_json(run(preset, batch_size, tuple(int(x) for x in lengths.split(",")), threads))
