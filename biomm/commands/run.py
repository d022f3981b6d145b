"""`biomm run PIPELINE.yaml` and `biomm schemas`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands import command_modules
from biomm.commands.apps import app
from biomm.commands.common import console, user_errors
from biomm.config import PipelineConfig, load_config, write_schemas
from biomm.pipeline import collect_steps, run_pipeline


@app.command("run")
def run_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (see pipelines/)"),
    set_: List[str] = typer.Option([], "--set", help="Override a value: key=value (e.g. workdir=/tmp/x)"),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Run only these step names"),
) -> None:
    """Run a pipeline: its steps in order (ingest -> train -> evaluate -> query)."""
    with user_errors():
        cfg = load_config(PipelineConfig, pipeline, set_)
        run_pipeline(cfg, Path.cwd(), collect_steps(command_modules()), only=only, console=console)
    console.print(f"[bold green]pipeline {cfg.name} finished[/]")


@app.command("schemas")
def schemas_cmd(out: Path = typer.Option(Path("schemas"), "--out", help="Folder for the JSON Schemas")) -> None:
    """Write the JSON Schemas of every config and record model."""
    for path in write_schemas(out):
        console.print(f"wrote {path}")
