"""What every reader shares: the typed error, the run summary, the config and cohort a run opens,
source discovery, a progress bar, and the one per-source loop:

    seen -> checksum -> skip if already ingested -> handle -> quarantine on IngestError

(`for_each_source`), so that a bad source never stops a run and re-running one is idempotent."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from biomm.config import DeidConfig, StrictModel, load_config
from biomm.store.atomic import sha256_bytes, sha256_file

if TYPE_CHECKING:
    from biomm.store.cohort import Cohort

M = TypeVar("M", bound=StrictModel)


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
    """One quarantined input as a run reports it: the source, the record and field when known, the reason."""

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
    details: dict[str, dict] = Field(default_factory=dict, description="Per source: what the reader found in it "
                                     "(omics: input state, value kind such as TPM / FPKM, gene-id scheme, steps)")
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when everything was ingested, 3 when some input was quarantined."""
        return 3 if self.quarantined else 0


# ---------------------------------------------------------------- what a run opens
def reader_config(model: type[M], config: M | dict | str | Path | None) -> M:
    """`config` as a `model`: the model itself, a dict, a YAML path, or None for the defaults."""
    return config if isinstance(config, model) else load_config(model, config)


@contextlib.contextmanager
def open_cohort(cohort: str | Path | Cohort, deid: DeidConfig | None = None, *,
                keep_setting: bool = False) -> Iterator[Cohort]:
    """The cohort a run writes to: an open `Cohort` as it is, else the folder opened (created when missing)
    for the run and closed after it.

    `deid` (when given) names the key and the date shift of a new cohort and whether it is de-identified;
    with `keep_setting`, `deid.enabled: true` means "as the cohort was created" rather than "must be on"."""
    from biomm.store.cohort import Cohort

    if isinstance(cohort, Cohort):
        yield cohort
        return
    options = {}
    if deid is not None:
        enabled = (None if deid.enabled else False) if keep_setting else deid.enabled
        options = {"deid": enabled, "deid_key": deid.key, "max_shift_days": deid.max_date_shift_days}
    with Cohort(cohort, **options) as c:
        yield c


# ---------------------------------------------------------------- the per-source loop
@dataclass
class Source:
    """One input as the per-source loop hands it to a reader."""

    path: Path
    name: str  # how the input is called: its path, or the URL it came from
    checksum: str
    label: str  # how the store names it: `name`, or checksum and suffix under de-identification
    data: bytes | None = None  # the file's bytes, when the loop read them to hash them


def quarantine(cohort: Cohort, modality: str, summary: IngestSummary, path: str | Path, err: IngestError, *,
               payload: bytes | None = None, name: str | None = None, checksum: str | None = None) -> None:
    """Keep bad input (the file, or `payload` for one bad record) in the cohort's quarantine and report it
    in `summary` under `name`, by default the source's store label (checksum and suffix under
    de-identification: file names often carry patient names), never the file name itself."""
    path = Path(path)
    if checksum is None:
        checksum = sha256_file(path) if path.is_file() else sha256_bytes(payload or b"")
    cohort.quarantine(modality=modality, source_path=path, reason=err.reason, record=err.record, field=err.field,
                      payload=payload, source_checksum=checksum)
    summary.quarantined += 1
    summary.quarantine.append(QuarantineEntry(source=name or cohort.source_label(path, checksum), record=err.record,
                                              field=err.field, reason=err.reason))


def for_each_source(
    cohort: Cohort,
    modality: str,
    files: Iterable[Path | tuple[Path, str]],
    handle: Callable[[Source], None],
    summary: IngestSummary,
    *,
    checksum: Callable[[Path], str] = sha256_file,
    read: bool = False,
    name_by_label: bool = True,
    progress: bool = True,
    description: str | None = None,
) -> None:
    """Run `handle` on every new source: count it seen, checksum it, skip it when that checksum was already
    ingested (in an earlier run or earlier in this one), and quarantine the whole source when `handle`
    raises IngestError (marked done with no records, so a re-run skips it too); the run goes on.

    A skipped source that an earlier run quarantined (whole or in part) is reported again as quarantined,
    with the earlier reason, so a re-run does not look like success.

    `files` are paths, or (path, name) pairs when a source has another name (a URL). `read` hands the
    file's bytes to `handle` (hashed here, so the file is read once). Quarantined sources are reported by
    their store label (`name_by_label`, the default: file names may carry identifiers), else by path."""
    done = cohort.ingested_sources(modality)
    earlier = cohort.quarantined_sources(modality)
    items = list(files)
    for item in iter_with_progress(items, description or modality, disable=not progress):
        path, name = (item if isinstance(item, tuple) else (item, str(item)))
        path = Path(path)
        summary.sources_seen += 1
        data = path.read_bytes() if read else None
        digest = sha256_bytes(data) if data is not None else checksum(path)
        if digest in done:
            summary.sources_skipped_unchanged += 1
            if digest in earlier:
                label, reason = earlier.pop(digest)
                summary.quarantined += 1
                summary.quarantine.append(QuarantineEntry(
                    source=label if name_by_label else str(path), reason=f"still quarantined: {reason}"))
            continue
        done.add(digest)
        source = Source(path, name, digest, cohort.source_label(name, digest), data)
        try:
            handle(source)
        except IngestError as err:
            quarantine(cohort, modality, summary, path, err, name=source.label if name_by_label else str(path),
                       checksum=digest)
            cohort.mark_source(digest, modality, source.label, 0, 1)
        del source, data  # one file's bytes in memory at a time


# ---------------------------------------------------------------- discovery and progress
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
    """A transient progress bar (description, bar, n of total, elapsed time)."""
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
