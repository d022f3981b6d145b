"""`biomm ingest fasta` and the `ingest_fasta` pipeline step."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import ingest_app
from biomm.commands.common import print_summary, user_errors
from biomm.config import load_config
from biomm.ingest.sequence.config import SequenceIngestConfig
from biomm.pipeline import PipelineContext, step


@ingest_app.command("fasta")
def ingest_fasta_cmd(
    sources: List[Path] = typer.Argument(..., help="FASTA files (.fa/.fasta/.faa/.fna, optionally .gz) or folders"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    alphabet: Optional[str] = typer.Option(None, "--alphabet", help="dna | protein | auto (default: config, auto)"),
    id_regex: Optional[str] = typer.Option(None, "--id-regex", help="Regex on the header; group 'link' (or 1) names the gene/subject"),
    map_csv: Optional[Path] = typer.Option(None, "--map", help="CSV mapping sequence ids (column 'id' or the first) to links"),
    map_column: Optional[str] = typer.Option(None, "--map-column", help="Column of --map holding the link"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML SequenceIngestConfig"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Ingest DNA or protein sequences; each bad record is quarantined with its reason, the rest kept."""
    from biomm.ingest.sequence.fasta import ingest

    with user_errors():
        cfg = load_config(SequenceIngestConfig, config, set_)
        if alphabet:
            if alphabet not in ("dna", "protein", "auto"):
                raise ValueError(f"--alphabet must be dna, protein or auto, got {alphabet!r}")
            cfg.alphabet = alphabet
        if id_regex:
            cfg.id_regex = id_regex
        if map_csv:
            cfg.map_csv, cfg.map_column = str(map_csv), map_column
        summary = ingest(sources, cohort, cfg, progress=not as_json)
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@step("ingest_fasta")
def ingest_fasta_step(ctx: PipelineContext, sources: list[str], cohort: str, config: dict | None = None) -> dict:
    """Pipeline step: `with: {sources: [...], cohort: DIR, config: {alphabet: dna, id_regex: ..., map_csv: ...}}`."""
    from biomm.ingest.sequence.fasta import ingest

    cfg = dict(config or {})
    if cfg.get("map_csv"):
        cfg["map_csv"] = str(ctx.path(cfg["map_csv"]))
    summary = ingest([ctx.path(s) for s in sources], ctx.path(cohort), load_config(SequenceIngestConfig, cfg))
    print_summary(summary, as_json=False)
    return summary.model_dump()
