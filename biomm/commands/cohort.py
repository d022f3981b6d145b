"""`biomm cohort info`."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from biomm.commands.apps import cohort_app
from biomm.commands.common import dump_json, out, user_errors
from biomm.modalities import MODALITIES
from biomm.pipeline import PipelineContext, step


def _table(title: str, rows: dict) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    for k, v in rows.items():
        t.add_row(str(k), str(v))
    return t


def print_cohort_summary(info: dict) -> None:
    """`cohort info` as tables: subjects, EHR events, each modality's section, the quarantine."""
    out.print(f"[bold]cohort[/] {info['cohort']}  (de-identified: {'yes' if info['deid'] else 'no'})")
    out.print(_table("subjects", {"total": info["subjects"], **{f"kind {k}": v for k, v in info["subjects_by_kind"].items()},
                                  **{f"with {k}": v for k, v in info["subjects_by_modality"].items()},
                                  **{f"split {k}": v for k, v in info["splits"].items()}}))
    ehr = info["ehr"]
    if ehr.get("events"):
        out.print(_table("EHR events", {"events": ehr["events"], "from": ehr["time_min"], "to": ehr["time_max"],
                                        **{f"system {k}": v for k, v in ehr["events_per_code_system"].items()}}))
    for modality in MODALITIES:
        if modality != "ehr" and isinstance(info.get(modality), dict):
            flat = {k: v for k, v in info[modality].items()}
            out.print(_table(modality, flat))
    q = info["quarantine"]
    out.print(f"[bold]quarantine[/]: {q['count']} entr{'y' if q['count'] == 1 else 'ies'}")
    for e in q["entries"][:30]:
        where = e["source"] + (f" [{e['record']}]" if e["record"] else "") + (f" field '{e['field']}'" if e["field"] else "")
        out.print(f"  [yellow]{e['modality']}[/] {where}: {e['reason']}", soft_wrap=True)


@cohort_app.command("info")
def info_cmd(
    cohort: Path = typer.Argument(..., help="Cohort folder"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Subjects, events per code system, modalities present, and the quarantine."""
    from biomm.store.cohort import Cohort
    from biomm.store.summary import cohort_summary

    with user_errors(), Cohort(cohort, create=False, read_only=True) as c:
        info = cohort_summary(c)
    if as_json:
        dump_json(info)
    else:
        print_cohort_summary(info)


@step("cohort_info")
def cohort_info_step(ctx: PipelineContext, cohort: str) -> dict:
    """Pipeline step: print and return the cohort summary."""
    from biomm.store.cohort import Cohort
    from biomm.store.summary import cohort_summary

    with Cohort(ctx.path(cohort), create=False) as c:
        info = cohort_summary(c)
    print_cohort_summary(info)
    return info
