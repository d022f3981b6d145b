"""`biomm bench scale` (the measurement lives in biomm.bench.scale)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from biomm.commands.apps import bench_app
from biomm.commands.common import dump_json, user_errors


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


@bench_app.command("scale")
def bench_scale(
    scales: str = typer.Option("1,4,16,64", help="Patient scale-ups: copies of the 250 shipped patients"),
    cells: str = typer.Option("10000,100000,1000000", help="Cell counts of the tiled PBMC files"),
    quick: bool = typer.Option(False, "--quick", help="Small sizes for a fast check: scales 1,2 and 2,000 / 8,000 cells"),
    work: Optional[Path] = typer.Option(None, help="Folder for the generated data and cohorts (kept and reused); "
                                                   "default: a temporary folder"),
    png: Path = typer.Option(Path("bench_scale.png"), help="Where to write the plot of the curves"),
    train_steps: int = typer.Option(30, help="Training steps timed at each size (the fixed batch of the DDP test)"),
    query_seconds: float = typer.Option(10, help="Seconds of load per size for the query latency"),
    patients: int = typer.Option(250, min=1, max=250, help="Shipped patients per copy (fewer for a fast check)"),
    isolate: bool = typer.Option(True, "--isolate/--in-process", help="Each step in a fresh process (its own peak "
                                                                      "RSS) or all in this one (faster, no RSS)"),
) -> None:
    """Cost curves from 1x to 64x: ingest, loader, train step, embed, index, query latency, peak RSS; prints
    one JSON object with the growth exponent of each cost and writes a PNG."""
    from biomm.bench.scale import run

    with user_errors():
        if quick:
            scales, cells = "1,2", "2000,8000"
        dump_json(run(_ints(scales), _ints(cells), work, png, train_steps, query_seconds, base_patients=patients, isolate=isolate))
