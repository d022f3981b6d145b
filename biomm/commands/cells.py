"""`biomm cells ...`: the virtual-cell heads' fitting commands, and the steps of the cells pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app
from biomm.commands.common import console, dump_json, user_errors
from biomm.pipeline import PipelineContext, step

cells_app = typer.Typer(help="Virtual-cell heads: annotation probe, perturbation response.", no_args_is_help=True)
app.add_typer(cells_app, name="cells")


def fit_annotator(model: str | Path, cohort: str | Path) -> dict:
    """Fit and save the annotation probe on the cohort's training cells; returns its classes."""
    from biomm.heads.cells.virtual_cell import VirtualCell

    probe = VirtualCell.open(model, cohort).fit_annotator("train")
    return {"classes": list(probe.classes)}


def simulate(cohort: str | Path, out: str | Path, n_targets: int, seed: int, doubles: int = 0, copies: int = 1) -> dict:
    """Write simulated knock-downs (singles and `doubles` pairs) of the cohort's cells; returns the file and the
    perturbed genes."""
    from biomm.heads.cells.cellset import cohort_cells_file
    from biomm.ingest.demo.perturbations import simulate_knockdowns

    path, targets = simulate_knockdowns(cohort_cells_file(Path(cohort)), Path(out), n_targets=n_targets, seed=seed,
                                        n_doubles=doubles, copies=copies)
    return {"data": str(path), "targets": targets, "doubles": doubles, "simulated": True}


def fit_perturbation(model: str | Path, cohort: str | Path, data: str | Path, holdout: list[str], group_key: str | None) -> dict:
    """Fit and save the perturbation head; returns the trained perturbations and the held-out metrics."""
    from biomm.heads.cells.virtual_cell import VirtualCell

    vc = VirtualCell.open(model, cohort)
    cfg = vc.cfg.perturbation.model_copy(update={"group_key": group_key} if group_key else {})
    pm = vc.fit_perturbation(data, cfg, holdout=holdout)
    return {"trained": sorted(pm.trained), "held_out": pm.metrics.get("held_out", {})}


@cells_app.command("fit-annotator")
def fit_annotator_cmd(model: Path = typer.Argument(...), cohort: Path = typer.Option(..., "--cohort")) -> None:
    """Fit the supervised cell-type probe on the training split's embeddings (saved in the model)."""
    with user_errors():
        dump_json(fit_annotator(model, cohort))


@cells_app.command("simulate-perturbation")
def simulate_cmd(cohort: Path = typer.Argument(..., help="Cell cohort"), out: Path = typer.Option(..., "--out"),
                 targets: int = typer.Option(12, "--targets"), seed: int = typer.Option(0, "--seed"),
                 doubles: int = typer.Option(0, "--doubles", help="Double perturbations A+B of the targets"),
                 copies: int = typer.Option(1, "--copies", help="Times each real cell appears (each copy perturbed anew)")) -> None:
    """Write a SIMULATED Perturb-seq-shaped .h5ad: in-silico knock-downs of the cohort's real cells."""
    with user_errors():
        dump_json(simulate(cohort, out, targets, seed, doubles, copies))


@cells_app.command("fit-perturbation")
def fit_perturbation_cmd(
    model: Path = typer.Argument(...), cohort: Path = typer.Option(..., "--cohort"),
    data: Path = typer.Option(..., "--data", help="Perturb-seq style .h5ad (obs 'perturbation'; 'control' cells)"),
    holdout: List[str] = typer.Option([], "--holdout", help="Perturbations kept out of training (unseen genes)"),
    group_key: Optional[str] = typer.Option(None, "--group-key", help="obs column of cell groups (e.g. cell type)"),
) -> None:
    """Fit the perturbation-response head; prints held-out metrics against the mean baseline."""
    with user_errors():
        dump_json(fit_perturbation(model, cohort, data, holdout, group_key))


@step("write_pbmc")
def write_pbmc_step(ctx: PipelineContext, out: str) -> dict:
    """scanpy's bundled pbmc68k_reduced (700 real PBMCs, 10 types) as an .h5ad file (no download)."""
    import scanpy as sc

    path = ctx.path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sc.datasets.pbmc68k_reduced().write_h5ad(path)
    return {"h5ad": str(path)}


@step("write_pbmc3k")
def write_pbmc3k_step(ctx: PipelineContext, out: str) -> dict:
    """10x PBMC 3k raw UMI counts after the tutorials' QC (2,638 cells), with marker-named Leiden clusters
    as obs['cell_type'] (labels derived, not curated), as an .h5ad file (no download: read from `desc`)."""
    from biomm.ingest.demo.cells import pbmc3k_counts

    path = ctx.path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = pbmc3k_counts()
    a.write_h5ad(path)
    counts = a.obs["cell_type"].value_counts()
    console.print(f"PBMC 3k: {a.n_obs} cells x {a.n_vars} genes (raw counts); cell types derived from Leiden "
                  f"clusters by canonical markers: {', '.join(f'{k} {v}' for k, v in counts.items())}")
    return {"h5ad": str(path), "cells": a.n_obs, "genes": a.n_vars, "cell_types": {k: int(v) for k, v in counts.items()}}


@step("fit_annotator")
def fit_annotator_step(ctx: PipelineContext, model: str, cohort: str) -> dict:
    """Pipeline step: fit the annotation probe."""
    return fit_annotator(ctx.path(model), ctx.path(cohort))


@step("simulate_perturbation")
def simulate_step(ctx: PipelineContext, cohort: str, out: str, targets: int = 12, seed: int = 0, doubles: int = 0,
                  copies: int = 1) -> dict:
    """Pipeline step: simulated Perturb-seq data (singles and doubles) from the cohort's cells."""
    info = simulate(ctx.path(cohort), ctx.path(out), targets, seed, doubles, copies)
    console.print(f"SIMULATED perturbations of real cells: {', '.join(info['targets'])}")
    return info


@step("fit_perturbation")
def fit_perturbation_step(ctx: PipelineContext, model: str, cohort: str, data: str, holdout: int = 2,
                          group_key: str | None = "bulk_labels") -> dict:
    """`holdout`: how many of the simulated targets (the first ones) stay unseen in training."""
    targets = ctx.results.get("simulate_perturbation", {}).get("targets", [])
    info = fit_perturbation(ctx.path(model), ctx.path(cohort), ctx.path(data), targets[:holdout], group_key)
    console.print(f"perturbation head: held-out {info['held_out']}")
    return info
