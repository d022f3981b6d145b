"""Config of the FASTA reader (`biomm ingest fasta`, the `ingest_fasta` pipeline step)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from biomm.config import StrictModel


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
    label_from: str | None = Field(
        None, pattern=r"^(filename|header:[A-Za-z0-9_.\-]+)$",
        description="Where each sequence's label comes from: 'filename' (the file's name without its suffixes, "
                    "e.g. one file per class) or 'header:KEY' (a KEY=value token of the header); stored in the "
                    "cohort's labels under label_name")
    label_name: str = Field("label", min_length=1, description="Name of the cohort label written from label_from")
