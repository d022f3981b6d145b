"""The Typer apps the command modules register on: `biomm`, `biomm ingest`, `biomm cohort`, `biomm bench`."""
from __future__ import annotations

import typer

app = typer.Typer(help="biomm: multimodal biomedical foundation models.", no_args_is_help=True, add_completion=False)
ingest_app = typer.Typer(help="Ingest sources into a cohort (validated, de-identified, bad input quarantined).", no_args_is_help=True)
cohort_app = typer.Typer(help="Inspect a cohort.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON object, figures as ratios against a peer in the same run.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(cohort_app, name="cohort")
app.add_typer(bench_app, name="bench")
