"""What every reader shares: the typed error, the run summary, source discovery and a progress bar."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class IngestError(ValueError):
    """Bad input: names the file, the record (when there is one), the field and the reason."""

    def __init__(self, source: str | Path, reason: str, record: str | None = None, field: str | None = None):
        self.source = str(source)
        self.reason = reason
        self.record = record
        self.field = field
        where = self.source + (f" [{record}]" if record else "") + (f" field '{field}'" if field else "")
        super().__init__(f"{where}: {reason}")


class QuarantineEntry(BaseModel):
    source: str
    record: str | None = None
    field: str | None = None
    reason: str


class IngestSummary(BaseModel):
    """What one ingest run did; printed by the CLI and returned by the Python API."""

    modality: str
    cohort: str
    sources_seen: int = 0
    sources_skipped_unchanged: int = Field(0, description="Sources whose checksum was already ingested (idempotent re-run)")
    subjects_added: int = 0
    records_written: int = 0
    items_written: int = Field(0, description="Events, instances, cells or sequences written")
    items_skipped_duplicate: int = 0
    items_ignored: int = Field(0, description="Valid input this reader does not use (e.g. Claim resources)")
    quarantined: int = 0
    quarantine: list[QuarantineEntry] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when everything was ingested, 3 when some input was quarantined."""
        return 3 if self.quarantined else 0


def expand_sources(sources: Iterable[str | Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files and folders (recursively) into a sorted list of files whose name ends with one of `suffixes`.

    Files named explicitly are kept whatever their suffix, so that bad input still reaches quarantine."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(suffixes)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"source not found: {p}")
    return unique_paths(out)


def unique_paths(files: Iterable[Path]) -> list[Path]:
    """Files in order, each once (two spellings of one file count as one)."""
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def progress(description: str, total: int, disable: bool = False) -> Progress:
    return Progress(
        TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True, disable=disable,
    )


def iter_with_progress(items, description: str, disable: bool = False, total: int | None = None) -> Iterator:
    """Items (a list, or any iterable with `total`) with a progress bar."""
    total = len(items) if total is None else total
    with progress(description, total, disable) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
