"""Shared CLI helpers: printing summaries, mapping errors to clear messages and exit codes."""
from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Iterator

import typer
from rich.console import Console
from rich.table import Table

from biomm.config import ConfigError
from biomm.store.errors import CohortError

if TYPE_CHECKING:
    from biomm.ingest.base import IngestSummary

console = Console(stderr=True)
out = Console()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one clear line and exit code 2 (no traceback)."""
    try:
        yield
    except (ConfigError, CohortError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def print_summary(summary: IngestSummary, as_json: bool) -> None:
    """An ingest summary as a table plus its quarantine and warnings (or as JSON)."""
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        t = Table(title=f"ingest {summary.modality} -> {summary.cohort}", show_header=False)
        for key in ("sources_seen", "sources_skipped_unchanged", "subjects_added", "records_written", "items_written",
                    "items_skipped_duplicate", "items_ignored", "quarantined", "seconds"):
            t.add_row(key.replace("_", " "), str(getattr(summary, key)))
        out.print(t)
        for q in summary.quarantine[:50]:
            where = q.source + (f" [{q.record}]" if q.record else "") + (f" field '{q.field}'" if q.field else "")
            console.print(f"[yellow]quarantined[/] {where}: {q.reason}", soft_wrap=True)
        if len(summary.quarantine) > 50:
            console.print(f"... and {len(summary.quarantine) - 50} more (see `biomm cohort info`)")
        for w in summary.warnings:
            console.print(f"[yellow]warning:[/] {w}")
    if summary.quarantined:
        console.print(f"[yellow]{summary.quarantined} input(s) quarantined[/]; the rest was ingested.")


def dump_json(obj) -> None:
    """`obj` as one JSON object on standard output."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
