"""The `biomm` command. Sub-commands live in `biomm/commands/<feature>.py` and register
themselves on the apps below; every module in that package is imported when the CLI starts."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

app = typer.Typer(help="biomm: multimodal biomedical foundation models.", no_args_is_help=True, add_completion=False)
ingest_app = typer.Typer(help="Ingest sources into a cohort (validated, de-identified, bad input quarantined).", no_args_is_help=True)
cohort_app = typer.Typer(help="Inspect a cohort.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON object, figures as ratios against a peer in the same run.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(cohort_app, name="cohort")
app.add_typer(bench_app, name="bench")


def load_commands() -> None:
    import biomm.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


load_commands()
