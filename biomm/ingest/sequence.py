"""FASTA sequences into a cohort: `sequences/<sha16>.parquet` per source (ids, alphabet, sequence,
checksums, token counts, links to genes or subjects). Bad records are quarantined one by one
with their reason; the rest of the file is kept. Re-running is idempotent.

Python API: `ingest_fasta(sources, cohort_dir, config)`, `sequence_summary(cohort)`.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Literal, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from biomm.config import StrictModel, load_config
from biomm.data.tokenizers import SequenceTokenizer, sequence_tokenizer
from biomm.data.vocab import GeneVocab
from biomm.ingest.base import IngestSummary, QuarantineEntry, expand_sources, iter_with_progress
from biomm.ingest.sequence_read import check_sequence, link_from_header, read_fasta
from biomm.store.atomic import atomic_path, sha256_file
from biomm.store.cohort import Cohort

MODALITY = "sequence"
SUFFIXES = (".fa", ".fasta", ".fna", ".faa", ".fa.gz", ".fasta.gz", ".fna.gz", ".faa.gz")


class SequenceIngestConfig(StrictModel):
    """`biomm ingest fasta` settings."""

    alphabet: Literal["dna", "protein", "auto"] = "auto"
    id_regex: str | None = Field(None, description="Regex on the header; group 'link' (or group 1) names the linked gene/subject")
    map_csv: str | None = Field(None, description="CSV mapping sequence ids (column 'id', else the first) to links")
    map_column: str | None = Field(None, description="Column of map_csv holding the link")
    protein_max_tokens: int = Field(1024, ge=3, description="ESM-2 context (incl. <cls>/<eos>); longer ones are reported")
    dna_max_tokens: int = Field(1000, ge=2, description="Nucleotide Transformer context in tokens; longer ones are reported")
    dna_kmer: int = Field(6, ge=1, le=8)
    tokenizer_dir: str | None = Field(None, description="A local pretrained transformers tokenizer overriding the built-ins")


def _load_map(cfg: SequenceIngestConfig) -> dict[str, str]:
    if not cfg.map_csv:
        return {}
    df = pd.read_csv(cfg.map_csv, dtype=str)
    id_col = "id" if "id" in df.columns else df.columns[0]
    if not cfg.map_column or cfg.map_column not in df.columns:
        raise ValueError(f"--map-column {cfg.map_column!r} not in {cfg.map_csv} (columns: {list(df.columns)})")
    return dict(zip(df[id_col].astype(str), df[cfg.map_column].astype(str)))


def _existing(cohort: Cohort) -> dict[str, str]:
    """sequence_id -> sha256 over the cohort's stored sequences (duplicate ids across files)."""
    files = [cohort.path(r["path"]) for r in cohort.records(MODALITY)]
    files = [str(f) for f in files if f.exists()]
    if not files:
        return {}
    rows = cohort.con.execute("SELECT sequence_id, sha256 FROM read_parquet(?)", [files]).fetchall()
    return dict(rows)


def _ingest_file(cohort: Cohort, path: Path, checksum: str, cfg: SequenceIngestConfig, toks: dict,
                 links: dict[str, str], regex, known: dict[str, str], summary: IngestSummary) -> None:
    vocab = GeneVocab.default()
    subjects = set(cohort.subjects())
    label = cohort.source_label(path, checksum)
    rows, bad = [], 0
    try:
        records = list(read_fasta(path))
    except (ValueError, OSError, EOFError) as exc:
        raise _FileError(f"not a readable FASTA file: {exc}") from None
    if not records:
        raise _FileError("no FASTA record ('>' header) in the file")
    for rec in records:
        try:
            if not rec.id:
                raise ValueError("record has an empty id ('>' with no name)")
            seq, alpha = check_sequence(rec.sequence, cfg.alphabet)
        except ValueError as exc:
            bad += 1
            _quarantine(cohort, path, rec.id or f"line {rec.line}", str(exc), rec.raw, summary)
            continue
        sha = hashlib.sha256(seq.encode()).hexdigest()
        if rec.id in known:
            if known[rec.id] == sha:
                summary.items_skipped_duplicate += 1
                continue
            bad += 1
            _quarantine(cohort, path, rec.id, "duplicate id with different sequence content", rec.raw, summary)
            continue
        known[rec.id] = sha
        tok: SequenceTokenizer = toks[alpha]
        n_tokens = len(tok.encode(seq))
        limit = cfg.protein_max_tokens if alpha == "protein" else cfg.dna_max_tokens
        link = links.get(rec.id) or (link_from_header(regex, f"{rec.id} {rec.description}") if regex else None)
        gene = vocab.token_id(link) if link else vocab.unk_id
        kind = None if not link else ("gene" if gene > vocab.unk_id else "subject" if link in subjects else "unresolved")
        rows.append({"sequence_id": rec.id, "description": rec.description, "alphabet": alpha, "sequence": seq,
                     "length": len(seq), "n_tokens": n_tokens, "too_long": n_tokens > limit, "sha256": sha,
                     "link": link, "link_kind": kind, "gene_token_id": int(gene) if kind == "gene" else None,
                     "source": label, "source_checksum": checksum})
    too_long = sum(r["too_long"] for r in rows)
    if too_long:
        summary.warnings.append(f"{path.name}: {too_long} sequences exceed the model context "
                                f"(protein {cfg.protein_max_tokens} / dna {cfg.dna_max_tokens} tokens); kept whole "
                                "and flagged too_long: split or filter them before training")
    unresolved = sum(r["link_kind"] == "unresolved" for r in rows)
    if unresolved:
        summary.warnings.append(f"{path.name}: {unresolved} links name neither a gene nor a cohort subject")
    if (links or regex) and not any(r["link"] for r in rows):
        summary.warnings.append(f"{path.name}: no sequence got a link from the map/regex")
    out = cohort.path("sequences", f"{checksum[:16]}.parquet")
    if rows:
        with atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    with cohort.transaction():
        if rows:
            cohort.add_record(f"sequence:{checksum[:16]}", "", MODALITY, cohort.relative(out), sha256_file(out), label,
                              checksum, len(rows), {"alphabets": sorted({r["alphabet"] for r in rows}),
                                                    "n_quarantined": bad, "too_long": too_long,
                                                    "links": {k: sum(r["link_kind"] == k for r in rows)
                                                              for k in ("gene", "subject", "unresolved")},
                                                    "tokenizers": {a: t.name for a, t in toks.items()}})
            summary.records_written += 1
            summary.items_written += len(rows)
        cohort.mark_source(checksum, MODALITY, label, len(rows), bad)


class _FileError(Exception):
    """The whole file is unusable."""


def _quarantine(cohort: Cohort, path: Path, record: str, reason: str, raw: bytes, summary: IngestSummary) -> None:
    cohort.quarantine(modality=MODALITY, source_path=path, reason=reason, record=record, field="sequence",
                      payload=raw)
    summary.quarantined += 1
    summary.quarantine.append(QuarantineEntry(source=str(path), record=record, field="sequence", reason=reason))


def ingest_fasta(sources: Sequence[str | Path], cohort_dir: str | Path,
                 config: SequenceIngestConfig | Mapping | str | Path | None = None,
                 overrides: list[str] | None = None, progress: bool = True) -> IngestSummary:
    """Ingest FASTA files into a cohort; returns the summary (exit_code 3 when records were quarantined)."""
    t0 = time.perf_counter()
    cfg = config if isinstance(config, SequenceIngestConfig) else load_config(SequenceIngestConfig, config, overrides)
    regex = re.compile(cfg.id_regex) if cfg.id_regex else None
    links = _load_map(cfg)
    toks = {a: sequence_tokenizer(a, k=cfg.dna_kmer, pretrained_dir=cfg.tokenizer_dir) for a in ("protein", "dna")}
    summary = IngestSummary(modality=MODALITY, cohort=str(cohort_dir))
    with Cohort(cohort_dir) as cohort:
        known = _existing(cohort)
        for path in iter_with_progress(expand_sources(sources, SUFFIXES), "fasta", disable=not progress):
            summary.sources_seen += 1
            checksum = sha256_file(path)
            if cohort.source_done(checksum, MODALITY):
                summary.sources_skipped_unchanged += 1
                continue
            try:
                _ingest_file(cohort, path, checksum, cfg, toks, links, regex, known, summary)
            except _FileError as err:
                cohort.quarantine(modality=MODALITY, source_path=path, reason=str(err))
                cohort.mark_source(checksum, MODALITY, cohort.source_label(path, checksum), 0, 1)
                summary.quarantined += 1
                summary.quarantine.append(QuarantineEntry(source=str(path), reason=str(err)))
    summary.seconds = time.perf_counter() - t0
    return summary


def read_sequences(cohort: Cohort) -> pd.DataFrame:
    """Every stored sequence of a cohort as one DataFrame."""
    files = [str(cohort.path(r["path"])) for r in cohort.records(MODALITY)]
    if not files:
        return pd.DataFrame()
    return cohort.con.execute("SELECT * FROM read_parquet(?) ORDER BY source, sequence_id", [files]).df()


def sequence_summary(cohort: Cohort) -> dict:
    """For `biomm cohort info`: files, sequences by alphabet, too long, links, quarantined records."""
    files = [str(cohort.path(r["path"])) for r in cohort.records(MODALITY)]
    n_q = cohort.con.execute("SELECT count(*) FROM quarantine WHERE modality = ?", [MODALITY]).fetchall()[0][0]
    out = {"files": len(files), "sequences": 0, "by_alphabet": {}, "too_long": 0, "links": {}, "quarantined": n_q}
    if files:
        for alpha, n, long_, mean_len in cohort.con.execute(
                "SELECT alphabet, count(*), sum(too_long::INT), avg(length) FROM read_parquet(?) GROUP BY 1 ORDER BY 1",
                [files]).fetchall():
            out["by_alphabet"][alpha] = {"sequences": n, "mean_length": round(float(mean_len), 1)}
            out["sequences"] += n
            out["too_long"] += int(long_ or 0)
        out["links"] = dict(cohort.con.execute(
            "SELECT coalesce(link_kind, 'none'), count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1", [files]).fetchall())
    return out


def load_sequence_config(path=None, overrides=None) -> SequenceIngestConfig:
    return load_config(SequenceIngestConfig, path, overrides)


__all__ = ["SequenceIngestConfig", "ingest_fasta", "read_sequences", "sequence_summary"]
