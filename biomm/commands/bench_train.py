"""`biomm bench train`."""
from __future__ import annotations

from pathlib import Path

import typer

from biomm.commands.apps import bench_app
from biomm.commands.common import dump_json


@bench_app.command("train")
def bench_train(
    steps: int = typer.Option(30, help="Training steps per run"),
    warmup: int = typer.Option(5, help="First steps left out of the timing (one-off costs)"),
    repeats: int = typer.Option(2, help="Runs per preset and precision, interleaved (best is kept)"),
    threads: int = typer.Option(1, help="Intra-op threads per run; 0 = torch's default. One thread keeps a shared "
                                        "machine's load from distorting the bf16/fp32 ratio"),
    work: Path = typer.Option(None, help="Folder for the bench cohorts (kept and reused); default: a temp folder"),
) -> None:
    """Tiny clinical and cell presets: subjects/s bf16 vs fp32, loader share of the step, peak RSS."""
    from biomm.bench.train import run

    dump_json(run(steps=steps, warmup=warmup, repeats=repeats, threads=threads, work=work))
