"""`biomm train` and `biomm export`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app, export_app
from biomm.commands.common import console, dump_json, user_errors
from biomm.pipeline import PipelineContext, step


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training config YAML (configs/train/*.yaml)"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (checkpoints, logs, model)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as JSON"),
) -> None:
    """Train cross-modal embeddings on a cohort (Lightning; resumable; DDP/FSDP by config)."""
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    if (out is None) == (resume is None):
        console.print("[red]error:[/] give --out RUN_DIR for a new run or --resume RUN_DIR to continue one")
        raise typer.Exit(2)
    with user_errors():
        cfg = load_train_config(config, set_)
        metrics = fit(cfg, cohort, resume or out, resume=resume is not None, progress=not as_json)
    if as_json:
        dump_json(metrics)


@export_app.command("model")
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `biomm train`"),
    to: Path = typer.Option(..., "--to", help="Folder for the self-contained model"),
) -> None:
    """Write a self-contained model: safetensors weights, config, vocabularies, model card."""
    from biomm.model.export import export

    with user_errors():
        path = export(run, to)
    console.print(f"exported {run} -> {path}")


@step("train")
def train_step(ctx: PipelineContext, config: str, cohort: str, out: str, set: list[str] | None = None) -> dict:
    """Pipeline step: train from scratch into `out`; returns the run folder and final metrics."""
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    cfg = load_train_config(ctx.path(config), set or [])
    run = ctx.path(out)
    if (run / "metrics.json").exists() and not (run / "checkpoints" / "last.ckpt").exists():
        raise RuntimeError(f"{run} exists without a checkpoint; remove it")
    if (run / "checkpoints" / "last.ckpt").exists():
        import shutil

        shutil.rmtree(run)  # the demo retrains from scratch on every run
    return {"run": str(run), "metrics": fit(cfg, ctx.path(cohort), run)}


@step("export")
def export_step(ctx: PipelineContext, run: str, to: str) -> dict:
    """Pipeline step: export a finished run; returns the model folder."""
    from biomm.model.export import export

    return {"model": str(export(ctx.path(run), ctx.path(to)))}
