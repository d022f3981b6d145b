"""`biomm ingest omics`, `biomm bench omics-loader` and the `ingest_omics` pipeline step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import bench_app, ingest_app
from biomm.commands.common import check_cohort_folder, print_summary, user_errors
from biomm.config import load_config
from biomm.pipeline import PipelineContext, step


@ingest_app.command("omics")
def ingest_omics_cmd(
    sources: List[Path] = typer.Argument(..., help=".h5ad, .zarr, .h5 (10x), .h5mu (MuData), 10x filtered_feature_bc_matrix folders, or folders of them"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML OmicsIngestConfig (see configs/omics/)"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value (e.g. qc.min_genes=50)"),
    label_key: List[str] = typer.Option([], "--label-key", help="obs column to keep as a cell label (repeatable)"),
    create: bool = typer.Option(False, "--create", help="Make a cohort in an existing non-empty folder"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on standard output"),
) -> None:
    """Ingest single-cell omics: detect what X holds, run the matching scanpy recipe, register cells as subjects."""
    from biomm.ingest.omics.anndata import ingest
    from biomm.ingest.omics.config import OmicsIngestConfig

    with user_errors():
        check_cohort_folder(cohort, create)
        cfg = load_config(OmicsIngestConfig, config, set_)
        cfg.label_keys = list(dict.fromkeys([*cfg.label_keys, *label_key]))
        summary = ingest(sources, cohort, cfg, progress=not as_json)
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@bench_app.command("omics-loader")
def bench_omics_loader(
    cells: int = typer.Option(200_000, "--cells", help="Cells in the 1x file (>= 200,000 for the reported figure)"),
    scale: int = typer.Option(4, "--scale", help="The larger file is this many times the 1x file"),
    max_cells: int = typer.Option(60_000, "--max-cells", help="Cells each loader delivers per measurement"),
    max_seconds: float = typer.Option(20.0, "--max-seconds", help="Time cap per measurement"),
    batch_size: int = typer.Option(256, "--batch-size"),
) -> None:
    """Cells/s into shuffled minibatches and peak RSS: biomm's chunk loader vs anndata's AnnLoader (one JSON object)."""
    from biomm.bench.omics_loader import run_bench

    print(json.dumps(run_bench(cells, scale, max_cells, max_seconds, batch_size), indent=2))


@step("ingest_omics")
def ingest_omics_step(ctx: PipelineContext, sources: list[str], cohort: str, config: dict | str | None = None,
                      label_keys: list[str] | None = None) -> dict:
    """Pipeline step: `with: {sources: [...], cohort: DIR, config: {..} or YAML path, label_keys: [...]}`."""
    from biomm.ingest.omics.anndata import ingest
    from biomm.ingest.omics.config import OmicsIngestConfig

    cfg = load_config(OmicsIngestConfig, ctx.path(config) if isinstance(config, str) else (config or {}))
    cfg.label_keys = list(dict.fromkeys([*cfg.label_keys, *(label_keys or [])]))
    summary = ingest([ctx.path(s) for s in sources], ctx.path(cohort), cfg)
    print_summary(summary, as_json=False)
    return summary.model_dump()
