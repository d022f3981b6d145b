"""Single-cell omics into a cohort: each source becomes `omics/<sha16>.h5ad` (log-normalised X,
raw counts in layers['counts'] when the input had them, var['highly_variable'], var['vocab_id']),
its cells become subjects (kind 'cell'), and bad sources go to quarantine with the reason.

Python API: `ingest(sources, cohort, config)`; embeddings go back with `writeback.write_back(...)`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from biomm.ingest.base import IngestError, IngestSummary, Source, for_each_source, open_cohort, reader_config
from biomm.ingest.omics.config import OmicsIngestConfig
from biomm.ingest.omics.preprocess import annotate_genes, choose_matrix, highly_variable, per_cell_steps, working_adata
from biomm.ingest.omics.read import OmicsSource, discover, read_source, source_checksum
from biomm.ingest.omics.validate import check_gene_ids, check_names
from biomm.store.atomic import atomic_path, sha256_file
from biomm.store.cohort import Cohort
from biomm.vocab.genes import GeneVocab

MODALITY = "omics"
MANIFEST_MEMORY_MIB = 64  # DuckDB's cache while cells register as subjects (else it grows with the cells)


def cell_subject_id(checksum: str, obs_name: str) -> str:
    """Cells are subjects; barcodes repeat across files, so the id carries the source's checksum."""
    return f"cell:{checksum[:12]}:{obs_name}"


def _process_in_memory(src: OmicsSource, source: str, cfg: OmicsIngestConfig) -> tuple[ad.AnnData, dict]:
    matrix, var_owner, rep, notes = choose_matrix(src.adata, source)
    a = working_adata(src.adata, matrix, var_owner)
    a, steps = per_cell_steps(a, rep.state, cfg)
    if a.n_obs == 0:
        raise IngestError(source, f"no cell passed QC ({'; '.join(steps)}): lower qc.min_genes?")
    import scanpy as sc

    before = a.n_vars
    sc.pp.filter_genes(a, min_cells=cfg.qc.min_cells)
    steps.append(f"filter_genes(min_cells={cfg.qc.min_cells}): {before - a.n_vars} genes dropped")
    a.var["highly_variable"], hvg_step = highly_variable(a, cfg, rep.state)
    steps.append(hvg_step)
    return a, {"state": rep.state, "kind": rep.kind, "notes": notes, "steps": steps, "stats": rep.stats}


def _process_chunked(src: OmicsSource, source: str, cfg: OmicsIngestConfig, out: Path, vocab: GeneVocab,
                     checksum: str) -> tuple[dict, dict, pd.DataFrame, int]:
    """Large input: HVGs from a random sample, then per-cell steps chunk by chunk, each chunk appended to
    `out` as it is done (`ChunkWriter`), so memory holds one chunk whatever the number of cells."""
    matrix, var_owner, rep, notes = choose_matrix(src.adata, source)
    n = src.adata.n_obs
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=min(cfg.hvg_sample_cells, n), replace=False))
    s, steps = per_cell_steps(working_adata(src.adata, matrix, var_owner, sample), rep.state, cfg)
    hvg, hvg_step = highly_variable(s, cfg, rep.state)
    del s
    steps.append(f"{hvg_step} on a random sample of {len(sample)} cells; genes not filtered (chunked path)")
    obs_parts, cov = [], {}
    with ChunkWriter(out) as writer:
        for a0 in range(0, n, cfg.chunk_cells):
            rows = np.arange(a0, min(a0 + cfg.chunk_cells, n))
            c, _ = per_cell_steps(working_adata(src.adata, matrix, var_owner, rows), rep.state, cfg)
            c.var["highly_variable"] = hvg
            cov = annotate_genes(c, vocab)
            c.obs["biomm_subject_id"] = [cell_subject_id(checksum, o) for o in c.obs_names]
            obs_parts.append(c.obs)
            writer.append(c)
        if not writer.n_obs:
            raise IngestError(source, f"no cell passed QC ({'; '.join(steps[:2])}): lower qc.min_genes?")
        cells = pd.concat(obs_parts)
        writer.finish(cells)
    info = {"state": rep.state, "kind": rep.kind, "notes": notes, "steps": steps, "stats": rep.stats}
    return info, cov, cells, len(hvg)


QC_VAR_COLUMNS = ("n_cells_by_counts", "mean_counts", "pct_dropout_by_counts", "total_counts")  # per chunk: dropped


class ChunkWriter:
    """Rows of same-gene AnnData chunks appended to one .h5ad (CSR X and layers; var and uns from the first
    chunk, without the per-chunk QC columns). Hand-written because anndata's `concat_on_disk` keeps every
    input part's matrices in memory (1.4 GB peak at a million cells against ~0.3 GB here)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.n_obs = 0

    def __enter__(self) -> "ChunkWriter":
        self.file = h5py.File(self.path, "w")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def append(self, a: ad.AnnData) -> None:
        """Append chunk `a` ([cells, genes], CSR X and layers); an empty chunk adds nothing."""
        if a.n_obs == 0:
            return
        import scipy.sparse as sp

        mats = {"X": a.X, **{f"layers/{k}": v for k, v in a.layers.items()}}
        if not self.n_obs:
            self.file.create_group("layers").attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for key, x in mats.items():
            x = sp.csr_matrix(x)
            if not self.n_obs:
                x.indptr = x.indptr.astype(np.int64)  # a 32-bit indptr on disk would overflow past 2^31 values
                ad.io.write_elem(self.file, key, x)
            else:
                ad.io.sparse_dataset(self.file[key]).append(x)
        if not self.n_obs:
            ad.io.write_elem(self.file, "var", a.var.drop(columns=[c for c in QC_VAR_COLUMNS if c in a.var]))
            ad.io.write_elem(self.file, "uns", dict(a.uns))
        self.n_obs += a.n_obs

    def finish(self, obs: pd.DataFrame) -> None:
        """Write the cells' obs [n_obs rows] and the AnnData encoding; the file then reads as one AnnData."""
        ad.io.write_elem(self.file, "obs", obs)
        self.file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})


def _attach_modalities(a: ad.AnnData, src: OmicsSource) -> dict[str, list[str]]:
    """MuData's other modalities (e.g. protein) as dense `obsm['mod_<name>']`, aligned to kept cells."""
    names = {}
    for m, other in src.extra.items():
        x = other[a.obs_names].X
        a.obsm[f"mod_{m}"] = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
        names[m] = [str(v) for v in other.var_names]
    return names


def _register_cells(cohort: Cohort, cells: pd.DataFrame, label_keys: Sequence[str], source: str) -> int:
    """Bulk insert cells as subjects (kind 'cell') with their splits and labels; returns how many were new."""
    ids = cells.index.astype(str).tolist()
    added = cohort.add_subjects(((sid, 0) for sid in ids), kind="cell", created_by="ingest-omics")
    for key in label_keys:
        cohort.replace_labels(key, ids, cells[key].astype(str).tolist(), source)
    return added


def _ingest_one(cohort: Cohort, path: Path, checksum: str, cfg: OmicsIngestConfig, label_keys: list[str],
                vocab: GeneVocab, summary: IngestSummary) -> None:
    source = str(path)
    src = read_source(path, cfg.backed_above_mb, cfg.rna_modality)
    missing = [k for k in label_keys if k not in src.adata.obs.columns]
    if missing:
        raise IngestError(source, f"label column(s) {missing} not in obs; obs has {list(src.adata.obs.columns)}",
                          field="obs")
    check_names(src.adata, source)
    scheme = check_gene_ids(src.adata, source, vocab.coverage(src.adata.var_names), cfg.min_gene_id_fraction)
    out = cohort.path("omics", f"{checksum[:16]}.h5ad")
    out.parent.mkdir(parents=True, exist_ok=True)
    chunked = src.backed or src.adata.n_obs > cfg.max_in_memory_cells
    with atomic_path(out) as tmp:
        if chunked:
            info, cov, cells_obs, n_vars = _process_chunked(src, source, cfg, tmp, vocab, checksum)
            with h5py.File(tmp, "r+") as f:
                uns = f["uns"] if "uns" in f else f.create_group("uns")
                uns.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
                ad.io.write_elem(uns, "biomm", _uns(info, cov, checksum, cfg))
        else:
            a, info = _process_in_memory(src, source, cfg)
            cov = annotate_genes(a, vocab)
            mods = _attach_modalities(a, src)
            a.obs["biomm_subject_id"] = [cell_subject_id(checksum, o) for o in a.obs_names]
            a.uns["biomm"] = _uns(info, cov, checksum, cfg, mods)
            a.write_h5ad(tmp)
            cells_obs, n_vars = a.obs, a.n_vars
    n_in, n_cells = src.adata.n_obs, len(cells_obs)
    if src.backed:
        src.adata.file.close()
    notes = src.notes + info["notes"]
    summary.warnings.extend(f"{path.name}: {n}" for n in notes)
    summary.warnings.append(f"{path.name}: values are {info['kind']} ({info['state']}); steps: {'; '.join(info['steps'])}")
    summary.details[source] = {"state": info["state"], "value_kind": info["kind"], "gene_id_scheme": scheme,
                               "steps": list(info["steps"])}
    if n_cells < n_in:
        summary.items_ignored += n_in - n_cells
        summary.warnings.append(f"{path.name}: {n_in - n_cells} of {n_in} cells removed by QC ({'; '.join(info['steps'][:2])})")
    if cov["fraction"] < cfg.min_vocab_fraction:
        summary.warnings.append(
            f"{path.name}: only {cov['n_mapped']} of {cov['n_genes']} genes ({cov['fraction']:.0%}) map to the gene "
            f"vocabulary (e.g. unmapped {cov['unmapped_examples'][:5]}); are gene ids symbols or Ensembl ids of human genes?")
    with cohort.transaction():
        cells = cells_obs.set_index("biomm_subject_id")
        summary.subjects_added += _register_cells(cohort, cells, label_keys, cohort.source_label(path, checksum))
        rel = cohort.relative(out)
        cohort.add_record(f"omics:{checksum[:16]}", "", MODALITY, rel, sha256_file(out), cohort.source_label(path, checksum),
                          checksum, n_cells, {"format": src.fmt, "state": info["state"], "value_kind": info["kind"],
                                              "gene_id_scheme": scheme, "notes": notes,
                                              "steps": info["steps"], "n_cells_in": n_in, "n_cells": n_cells,
                                              "n_genes": n_vars, "vocab_coverage": cov, "label_keys": label_keys,
                                              "chunked": chunked})
        cohort.mark_source(checksum, MODALITY, cohort.source_label(path, checksum), 1, 0)
    summary.records_written += 1
    summary.items_written += n_cells


def _uns(info: dict, cov: dict, checksum: str, cfg: OmicsIngestConfig, mods: dict | None = None) -> dict:
    out = {"source_state": info["state"], "source_value_kind": info["kind"], "steps": list(info["steps"]), "notes": list(info["notes"]),
           "source_checksum": checksum, "vocab_fraction": float(cov["fraction"]),
           "tokens": cfg.tokens.model_dump_json()}
    if mods:
        out["modalities"] = mods
    return out


def ingest(
    sources: Iterable[str | Path],
    cohort: str | Path | Cohort,
    config: OmicsIngestConfig | dict | str | Path | None = None,
    *,
    progress: bool = True,
) -> IngestSummary:
    """Ingest omics sources (.h5ad, .zarr, 10x, .h5mu, or folders of them) into a cohort (a folder, created
    when missing, or an open Cohort); returns the run summary (exit_code 3 if anything was quarantined)."""
    t0 = time.perf_counter()
    cfg = reader_config(OmicsIngestConfig, config)
    keys = list(dict.fromkeys(cfg.label_keys))
    vocab = GeneVocab.default()
    paths = discover(sources)
    with open_cohort(cohort) as c, c.bounded_memory(MANIFEST_MEMORY_MIB):
        summary = IngestSummary(modality=MODALITY, cohort=str(c.root))

        def handle(source: Source) -> None:
            _ingest_one(c, source.path, source.checksum, cfg, keys, vocab, summary)

        for_each_source(c, MODALITY, paths, handle, summary, checksum=source_checksum, progress=progress,
                        description="omics")
    summary.seconds = time.perf_counter() - t0
    return summary
