"""`biomm ingest fasta`, `biomm gene-table` (the bridge from a sequence model to a cell model's gene table) and
their pipeline steps, plus `sequence_demo_data` (modlAMP peptides and janggu DNA as class-named FASTA files)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app, ingest_app
from biomm.commands.common import check_cohort_folder, console, dump_json, print_summary, user_errors
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
    label_from: Optional[str] = typer.Option(None, "--label-from", help="Each sequence's label: 'filename' (one file "
                                             "per class) or 'header:KEY' (a KEY=value token of the header)"),
    label_name: Optional[str] = typer.Option(None, "--label-name", help="Cohort label written from --label-from "
                                             "(default: label)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML SequenceIngestConfig"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    create: bool = typer.Option(False, "--create", help="Make a cohort in an existing non-empty folder"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on standard output"),
) -> None:
    """Ingest DNA or protein sequences; each bad record is quarantined with its reason, the rest kept."""
    from biomm.ingest.sequence.fasta import ingest

    with user_errors():
        check_cohort_folder(cohort, create)
        cfg = load_config(SequenceIngestConfig, config, set_)
        if alphabet:
            if alphabet not in ("dna", "protein", "auto"):
                raise ValueError(f"--alphabet must be dna, protein or auto, got {alphabet!r}")
            cfg.alphabet = alphabet
        if id_regex:
            cfg.id_regex = id_regex
        if map_csv:
            cfg.map_csv, cfg.map_column = str(map_csv), map_column
        if label_from or label_name:  # validated again: --label-from must be filename or header:KEY
            cfg = SequenceIngestConfig.model_validate({**cfg.model_dump(), **({"label_from": label_from} if label_from else {}),
                                                       **({"label_name": label_name} if label_name else {})})
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


@step("sequence_demo_data")
def sequence_demo_data_step(ctx: PipelineContext, out: str, protein: str | None = "AMPvsUniProt.csv",
                            dna: bool = True, limit: int | None = None) -> dict:
    """Pipeline step: modlAMP peptides (`protein`: the set's CSV name) written as `<out>/protein/<class>.fa`, and
    janggu's Oct4 / Mafk peaks linked (never copied) as `<out>/dna/<class>.fa`; `--label-from filename` labels them."""
    from biomm.ingest.demo.sequences import janggu_fasta, modlamp_fasta

    root = ctx.path(out)
    info: dict = {}
    if protein:
        info["protein"] = [str(p) for p in modlamp_fasta(root / "protein", protein, limit)]
    if dna:
        info["dna"] = [str(p) for p in janggu_fasta(root / "dna")]
    return info


def write_gene_table_from(model: Path, fasta: Path, cohort: Path, out_path: Path, symbol_from: str) -> dict:
    """Embed each gene product of `fasta` with a sequence model and write the gene table (gene, vector)."""
    from biomm.heads.sequences import gene_table_from_fasta, write_gene_table
    from biomm.model.bundle import load

    symbols, vectors, problems = gene_table_from_fasta(load(model), fasta, cohort, symbol_from)
    path = write_gene_table(out_path, symbols, vectors)
    return {"table": str(path), "genes": len(symbols), "width": int(vectors.shape[1]), "skipped": problems}


@app.command("gene-table")
def gene_table_cmd(
    model: Path = typer.Argument(..., help="Exported sequence model folder"),
    fasta: Path = typer.Argument(..., help="FASTA of gene products (protein or DNA, the model's alphabet)"),
    cohort: Path = typer.Option(..., "--cohort", help="The sequence cohort the model was trained on (its tokenizer)"),
    out_path: Path = typer.Option(..., "--out", help="Gene table to write: .parquet, .tsv or .csv"),
    symbol_from: str = typer.Option("header:gene", "--symbol-from",
                                    help="Where a record names its gene: id, header:KEY or regex:PATTERN"),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as one JSON object"),
) -> None:
    """The bridge across scales: a gene table (symbol -> the sequence model's embedding of the gene's product)
    that a cell model's gene identities start from (`adapters.omics.gene_embeddings: TABLE`)."""
    with user_errors():
        info = write_gene_table_from(model, fasta, cohort, out_path, symbol_from)
    if as_json:
        dump_json(info)
    else:
        console.print(f"{info['genes']} genes x {info['width']} -> {info['table']}"
                      + (f" ({len(info['skipped'])} records skipped)" if info["skipped"] else ""))


@step("gene_table")
def gene_table_step(ctx: PipelineContext, model: str, fasta: str, cohort: str, out: str,
                    symbol_from: str = "header:gene") -> dict:
    """Pipeline step: `biomm gene-table`."""
    return write_gene_table_from(ctx.path(model), ctx.path(fasta), ctx.path(cohort), ctx.path(out), symbol_from)
