"""Config of the AnnData reader (`biomm ingest omics`, the `ingest_omics` pipeline step, configs/omics/*.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from biomm.config import StrictModel
from biomm.vocab.tokenizers import GeneTokenizerConfig


class OmicsQCConfig(StrictModel):
    """Cell and gene filters of the scanpy recipe."""

    min_genes: int = Field(200, ge=0, description="Drop cells with fewer expressed genes (sc.pp.filter_cells)")
    min_cells: int = Field(3, ge=0, description="Drop genes expressed in fewer cells (sc.pp.filter_genes; in-memory files only)")
    max_pct_mito: float | None = Field(20.0, description="Drop cells with more % counts from MT- genes (counts input only); null = keep")


class OmicsIngestConfig(StrictModel):
    """`biomm ingest omics` settings."""

    qc: OmicsQCConfig = OmicsQCConfig()
    target_sum: float = Field(1e4, gt=0, description="sc.pp.normalize_total target per cell")
    n_top_genes: int = Field(2000, ge=1, description="Highly variable genes to flag (var['highly_variable'])")
    hvg_flavor: Literal["seurat", "cell_ranger", "seurat_v3"] = Field(
        "seurat", description="seurat_v3 needs raw counts; the others run on log-normalised data")
    tokens: GeneTokenizerConfig = GeneTokenizerConfig()
    label_keys: list[str] = Field(default_factory=list, description="obs columns copied to the cohort's labels table")
    min_vocab_fraction: float = Field(0.8, ge=0, le=1, description="Warn when fewer genes map to the gene vocabulary")
    min_gene_id_fraction: float = Field(0.2, ge=0, le=1, description="Quarantine a file when fewer of its gene ids map "
                                        "to the vocabulary (an unknown gene-id scheme)")
    rna_modality: str | None = Field(None, description="MuData: the expression modality (default: 'rna', else the one best mapped to genes)")
    backed_above_mb: float = Field(1024, gt=0, description=".h5ad files larger than this open backed (lazily)")
    max_in_memory_cells: int = Field(300_000, ge=1, description="Above this, preprocess in chunks of chunk_cells")
    chunk_cells: int = Field(10_000, ge=100, description="Chunked path: cells preprocessed at a time (bounds memory)")
    hvg_sample_cells: int = Field(25_000, ge=100, description="Chunked path: HVGs from a random sample of this many cells")
    seed: int = 0
