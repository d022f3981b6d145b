"""`biomm sweep SWEEP.yaml`: a grid over fusion timing x operation x objective set, trained and measured alike."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app
from biomm.commands.common import console, dump_json, user_errors
from biomm.pipeline import PipelineContext, step


@app.command("sweep")
def sweep_cmd(
    sweep: Path = typer.Argument(..., help="Sweep YAML (e.g. pipelines/design_triangle.yaml's sweep file)"),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Cohort folder (default: the YAML's cohort)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default: the YAML's out); re-running resumes"),
    set_: List[str] = typer.Option([], "--set", help="Override a sweep value: key=value"),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON"),
) -> None:
    """Train and measure every cell of a grid (task AUROC, retrieval recall, cost); finished cells are kept."""
    from biomm.eval.sweep import load_sweep_config, run_sweep

    with user_errors():
        cfg = load_sweep_config(sweep, set_)
        table = run_sweep(cfg, cohort, out, log=console.print)
    if as_json:
        dump_json(table)
    else:
        console.print(f"table: {Path(out or cfg.out or f'sweeps/{cfg.name}') / 'sweep.md'}")


@step("sweep")
def sweep_step(ctx: PipelineContext, sweep: str, cohort: str, out: str, set: list[str] | None = None) -> dict:
    """Pipeline step: `biomm sweep`; returns the table's path."""
    from biomm.eval.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(ctx.path(sweep), set or [])
    run_sweep(cfg, ctx.path(cohort), ctx.path(out), log=console.print)
    return {"table": str(ctx.path(out) / "sweep.md")}
