"""`biomm run PIPELINE.yaml` and `biomm schemas`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands import command_modules
from biomm.commands.apps import app
from biomm.commands.common import console, user_errors
from biomm.config import PipelineConfig, load_config, write_schemas
from biomm.pipeline import check_steps, collect_steps, run_pipeline


@app.command("run")
def run_cmd(
    pipelines: List[Path] = typer.Argument(..., help="Pipeline YAML(s) (see pipelines/), run one after the other"),
    set_: List[str] = typer.Option([], "--set", help="Override a value: key=value (e.g. workdir=/tmp/x)"),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Run only these step names"),
) -> None:
    """Run pipelines: each one's steps in order (ingest -> train -> evaluate -> query), in one process (the
    libraries are imported once). Every file is checked before the first step runs."""
    with user_errors():
        configs = [load_config(PipelineConfig, p, set_) for p in pipelines]
        steps = collect_steps(command_modules())
        for cfg in configs:
            check_steps(cfg, steps)
        for cfg in configs:
            run_pipeline(cfg, Path.cwd(), steps, only=only, console=console)
            console.print(f"[bold green]pipeline {cfg.name} finished[/]")


@app.command("schemas")
def schemas_cmd(out: Path = typer.Option(Path("schemas"), "--out", help="Folder for the JSON Schemas")) -> None:
    """Write the JSON Schemas of every config and record model."""
    for path in write_schemas(out):
        console.print(f"wrote {path}")
