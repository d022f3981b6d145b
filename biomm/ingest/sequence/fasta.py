"""FASTA sequences into a cohort: `sequences/<sha16>.parquet` per source (ids, alphabet, sequence,
checksums, token counts, links to genes or subjects). Bad records are quarantined one by one
with their reason; the rest of the file is kept. Re-running is idempotent.

Python API: `ingest(sources, cohort, config)`; stored sequences read back with `biomm.store.sequences`.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from biomm.ingest.base import (IngestError, IngestSummary, Source, expand_sources, for_each_source, open_cohort,
                               quarantine, reader_config)
from biomm.ingest.sequence.config import SequenceIngestConfig
from biomm.ingest.sequence.read import check_sequence, filename_label, header_label, link_from_header, read_fasta
from biomm.store.atomic import atomic_path, sha256_file
from biomm.store.cohort import Cohort
from biomm.store.sequences import sequence_hashes
from biomm.vocab.genes import GeneVocab
from biomm.vocab.tokenizers import SequenceTokenizer, sequence_tokenizer

MODALITY = "sequence"
SUFFIXES = (".fa", ".fasta", ".fna", ".faa", ".fa.gz", ".fasta.gz", ".fna.gz", ".faa.gz")


def _load_map(cfg: SequenceIngestConfig) -> dict[str, str]:
    if not cfg.map_csv:
        return {}
    df = pd.read_csv(cfg.map_csv, dtype=str)
    id_col = "id" if "id" in df.columns else df.columns[0]
    if not cfg.map_column or cfg.map_column not in df.columns:
        raise ValueError(f"--map-column {cfg.map_column!r} not in {cfg.map_csv} (columns: {list(df.columns)})")
    return dict(zip(df[id_col].astype(str), df[cfg.map_column].astype(str)))


def _ingest_file(cohort: Cohort, path: Path, checksum: str, cfg: SequenceIngestConfig, toks: dict,
                 links: dict[str, str], regex, known: dict[str, str], summary: IngestSummary) -> None:
    """One FASTA file: its good records into one shard and record, each bad record quarantined on its own;
    IngestError when the whole file is unusable."""
    vocab = GeneVocab.default()
    subjects = set(cohort.subjects())
    label = cohort.source_label(path, checksum)
    rows, bad = [], 0
    labels: dict[str, str] = {}  # subject id -> label (cfg.label_from)
    label_key = cfg.label_from.split(":", 1)[1] if cfg.label_from and cfg.label_from.startswith("header:") else None
    file_label = filename_label(path) if cfg.label_from == "filename" else None
    try:
        records = list(read_fasta(path))
    except (ValueError, OSError, EOFError) as exc:
        raise IngestError(path, f"not a readable FASTA file: {exc}") from None
    if not records:
        raise IngestError(path, "no FASTA record ('>' header) in the file")
    for rec in records:
        try:
            if not rec.id:
                raise ValueError("record has an empty id ('>' with no name)")
            seq, alpha = check_sequence(rec.sequence, cfg.alphabet)
            value = header_label(rec.description, label_key) if label_key else file_label
            if label_key and value is None:
                raise ValueError(f"label key {label_key!r} missing from the header (--label-from {cfg.label_from})")
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
        # a sequence linked to a cohort subject (a patient) is that subject's; any other sequence is a subject itself
        subject = link if kind == "subject" else rec.id
        if value is not None:
            labels[subject] = value
        rows.append({"sequence_id": rec.id, "description": rec.description, "alphabet": alpha, "sequence": seq,
                     "length": len(seq), "n_tokens": n_tokens, "too_long": n_tokens > limit, "sha256": sha,
                     "link": link, "link_kind": kind, "gene_token_id": int(gene) if kind == "gene" else None, "subject_id": subject,
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
        own = [r["subject_id"] for r in rows if r["link_kind"] != "subject"]
        summary.subjects_added += cohort.add_subjects(((sid, 0) for sid in own), kind="sequence",
                                                      created_by="ingest-fasta")
        if labels:
            cohort.replace_labels(cfg.label_name, list(labels), list(labels.values()), source=f"fasta:{cfg.label_from}")
        cohort.mark_source(checksum, MODALITY, label, len(rows), bad)


def _quarantine(cohort: Cohort, path: Path, record: str, reason: str, raw: bytes, summary: IngestSummary) -> None:
    quarantine(cohort, MODALITY, summary, path, IngestError(path, reason, record=record, field="sequence"), payload=raw)


def ingest(
    sources: Iterable[str | Path],
    cohort: str | Path | Cohort,
    config: SequenceIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest FASTA files (or folders of them) into a cohort (a folder, created when missing, or an open
    Cohort); returns the summary (exit_code 3 when records were quarantined)."""
    t0 = time.perf_counter()
    cfg = reader_config(SequenceIngestConfig, config)
    regex = re.compile(cfg.id_regex) if cfg.id_regex else None
    links = _load_map(cfg)
    toks = {a: sequence_tokenizer(a, k=cfg.dna_kmer, pretrained_dir=cfg.tokenizer_dir) for a in ("protein", "dna")}
    files = expand_sources(sources, SUFFIXES)
    with open_cohort(cohort) as c:
        summary = IngestSummary(modality=MODALITY, cohort=str(c.root))
        known = sequence_hashes(c)

        def handle(source: Source) -> None:
            _ingest_file(c, source.path, source.checksum, cfg, toks, links, regex, known, summary)

        for_each_source(c, MODALITY, files, handle, summary, checksum=sha256_file, progress=progress,
                        description="fasta")
    summary.seconds = time.perf_counter() - t0
    return summary
