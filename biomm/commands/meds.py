"""MEDS out and in: `biomm export meds COHORT OUT` (incremental; task labels as MEDS label files),
`biomm ingest meds DIR --cohort C`, and `biomm meds baselines DIR --task T` (clinical baselines from a
MEDS dataset alone); with their pipeline steps."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app, export_app, ingest_app
from biomm.commands.common import console, dump_json, print_summary, user_errors
from biomm.config import load_config
from biomm.pipeline import PipelineContext, step

meds_app = typer.Typer(help="Work with MEDS datasets (a `biomm export meds` folder or any MEDS v0.4 dataset).",
                       no_args_is_help=True)
app.add_typer(meds_app, name="meds")


def task_labels(cohort: str | Path, tasks: list[str], tasks_dir: list[str] | None = None) -> dict:
    """MEDS label rows (`LabelRows`) of each named task on the cohort's events, by task name."""
    import numpy as np

    from biomm.data.ehr import EPOCH, EhrEvents, EhrVocab
    from biomm.data.tasks import build_samples, load_tasks
    from biomm.store.meds import LabelRows

    if not tasks:
        return {}
    known = load_tasks(tasks_dir)
    missing = [t for t in tasks if t not in known]
    if missing:
        raise ValueError(f"unknown task(s) {', '.join(missing)} (known: {', '.join(sorted(known))})")
    events = EhrEvents(cohort, EhrVocab.build(cohort, None, 1))
    out = {}
    for name in tasks:
        samples = build_samples(known[name], events, cohort)
        us = np.array([int(round(s.prediction_time * 86_400e6)) for s in samples], dtype=np.int64)
        out[name] = LabelRows([s.subject_id for s in samples], EPOCH + us.astype("timedelta64[us]"),
                              np.array([s.labels[name] for s in samples]) >= 0.5)
    return out


def export_cohort_meds(cohort: str | Path, out: str | Path, shards: int | None = None, notes: bool = False,
                       tasks: list[str] | None = None, tasks_dir: list[str] | None = None) -> dict:
    """Write (or update) the MEDS v0.4 export of a cohort, with the label files of `tasks`; returns its summary."""
    from biomm.store.cohort import Cohort
    from biomm.store.meds import export_meds

    labels = task_labels(cohort, list(tasks or []), tasks_dir)
    with Cohort(cohort, create=False, read_only=True) as c:
        return export_meds(c, out, shards=shards, notes=notes, labels=labels).to_dict()


@export_app.command("meds")
def export_meds_cmd(
    cohort: Path = typer.Argument(..., help="Cohort folder"),
    out: Path = typer.Argument(..., help="MEDS dataset folder (created, or brought up to date when it is an earlier export)"),
    shards: Optional[int] = typer.Option(None, "--shards", min=1, help="Data shards (default: as before, else one per 10,000 subjects)"),
    notes: bool = typer.Option(False, "--notes", help="Also export note text as NOTE/<kind> events (free text: check before sharing)"),
    task: List[str] = typer.Option([], "--task", help="Write this task's labels as a MEDS label file (repeatable)"),
    tasks_dir: List[str] = typer.Option([], "--tasks-dir", help="Folder of extra task YAML files"),
) -> None:
    """Write the cohort's EHR as a MEDS v0.4 dataset (int64 pseudonymous ids); only changed shards are rewritten."""
    with user_errors():
        dump_json(export_cohort_meds(cohort, out, shards, notes, task, tasks_dir))


@ingest_app.command("meds")
def ingest_meds_cmd(
    sources: List[Path] = typer.Argument(..., help="MEDS dataset folders (data/ and metadata/; v0.4 or v0.3)"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML MedsIngestConfig"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    no_deid: bool = typer.Option(False, "--no-deid", help="Data is already de-identified: keep ids and dates"),
    deid_key: Optional[str] = typer.Option(None, "--deid-key", help="De-identification key (default: the cohort's key file)"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Ingest a MEDS dataset as the cohort's EHR (keyed pseudonyms, shifted dates); a dataset that breaks a
    MEDS rule is refused whole, naming the file and the rule."""
    from biomm.ingest.ehr.config import MedsIngestConfig
    from biomm.ingest.ehr.meds import ingest

    with user_errors():
        cfg = load_config(MedsIngestConfig, config, set_)
        if no_deid:
            cfg.deid.enabled = False
        if deid_key:
            cfg.deid.key = deid_key
        summary = ingest(sources, cohort, cfg, progress=not as_json)
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@meds_app.command("baselines")
def baselines_cmd(
    dataset: Path = typer.Argument(..., help="MEDS dataset folder (e.g. from `biomm export meds --task ...`)"),
    task: List[str] = typer.Option(..., "--task", help="Label file: labels/<task>/ of the dataset, or a path (repeatable)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Bag-of-codes logistic regression and count GBM from the MEDS dataset alone (held_out AUROC, 95% CI)."""
    from biomm.eval.meds_baselines import run_baselines

    with user_errors():
        dump_json({t: run_baselines(dataset, t, seed) for t in task})


@step("export_meds")
def export_meds_step(ctx: PipelineContext, cohort: str, out: str, tasks: list[str] | None = None,
                     notes: bool = False, shards: int | None = None) -> dict:
    """Pipeline step: `with: {cohort: DIR, out: DIR, tasks: [...]}`."""
    info = export_cohort_meds(ctx.path(cohort), ctx.path(out), shards, notes, tasks)
    console.print(f"MEDS export: {info['subjects']} subjects, {info['events']} events -> {info['out']}")
    return info


@step("ingest_meds")
def ingest_meds_step(ctx: PipelineContext, sources: list[str], cohort: str, config: dict | None = None) -> dict:
    """Pipeline step: `with: {sources: [DIR], cohort: DIR, config: {...}}`."""
    from biomm.ingest.ehr.config import MedsIngestConfig
    from biomm.ingest.ehr.meds import ingest

    summary = ingest([ctx.path(s) for s in sources], ctx.path(cohort), load_config(MedsIngestConfig, config or {}))
    print_summary(summary, as_json=False)
    return summary.model_dump()
