"""Shared CLI helpers: printing summaries, mapping errors to clear messages and exit codes."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biomm.config import ConfigError
from biomm.store.errors import CohortError

if TYPE_CHECKING:
    from biomm.ingest.base import IngestSummary

console = Console(stderr=True)
out = Console()
DEID_KEY_ENV = "BIOMM_DEID_KEY"
COHORT_MANIFEST = "cohort.duckdb"  # as biomm.store.cohort.MANIFEST (that module imports DuckDB)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one clear line and exit code 2 (no traceback)."""
    try:
        yield
    except (ConfigError, CohortError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def deid_key(inline: str | None, key_file: Path | None) -> str | None:
    """The de-identification key of a command line: `--deid-key-file`, else $BIOMM_DEID_KEY, else the inline
    `--deid-key` (with a warning: it shows in `ps` and shell history), else None (the cohort's key file)."""
    if inline and key_file:
        raise ValueError("give --deid-key or --deid-key-file, not both")
    if key_file is not None:
        if not key_file.is_file():
            raise FileNotFoundError(f"--deid-key-file {key_file}: no such file")
        key = key_file.read_text().strip()
        if not key:
            raise ValueError(f"--deid-key-file {key_file} is empty")
        return key
    if inline:
        console.print("[yellow]warning:[/] --deid-key on the command line shows in `ps` and shell history; "
                      f"use --deid-key-file FILE or {DEID_KEY_ENV}", soft_wrap=True)
        return inline
    return os.environ.get(DEID_KEY_ENV) or None


def check_cohort_folder(cohort: Path, create: bool = False) -> None:
    """Refuse a `--cohort` that is a file, or an existing non-empty folder that holds no cohort (a model
    folder, say) unless `create` (`--create`) says to make one there. ValueError in one line."""
    if cohort.exists() and not cohort.is_dir():
        raise ValueError(f"--cohort {cohort} is a file; a cohort is a folder")
    if cohort.is_dir() and not (cohort / COHORT_MANIFEST).exists() and any(cohort.iterdir()) and not create:
        raise ValueError(f"--cohort {cohort} is a folder with other files and no cohort ({COHORT_MANIFEST}); "
                         "give an empty or new folder, or --create to make a cohort there")


def print_summary(summary: IngestSummary, as_json: bool) -> None:
    """An ingest summary as a table plus its quarantine and warnings (or as JSON)."""
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        t = Table(title=escape(f"ingest {summary.modality} -> {summary.cohort}"), show_header=False)
        for key in ("sources_seen", "sources_skipped_unchanged", "subjects_added", "records_written", "items_written",
                    "items_skipped_duplicate", "items_ignored", "quarantined", "seconds"):
            value = getattr(summary, key)
            t.add_row(key.replace("_", " "), f"{value:.1f} s" if key == "seconds" else str(value))
        out.print(t)
        for q in summary.quarantine[:50]:
            where = q.source + (f" [{q.record}]" if q.record else "") + (f" field '{q.field}'" if q.field else "")
            console.print(f"[yellow]quarantined[/] {escape(where)}: {escape(q.reason)}", soft_wrap=True)
        if len(summary.quarantine) > 50:
            console.print(f"... and {len(summary.quarantine) - 50} more (see `biomm cohort info`)")
        for w in summary.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    if summary.quarantined:
        console.print(f"[yellow]{summary.quarantined} input(s) quarantined[/]; the rest was ingested.")


def dump_json(obj) -> None:
    """`obj` as one JSON object on standard output."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
