"""Single-cell omics into a cohort: each source becomes `omics/<sha16>.h5ad` (log-normalised X,
raw counts in layers['counts'] when the input had them, var['highly_variable'], var['vocab_id']),
its cells become subjects (kind 'cell'), and bad sources go to quarantine with the reason.

Python API: `ingest_omics(sources, cohort_dir, config, label_keys)`, `write_back(...)`, `omics_summary(cohort)`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from biomm.config import load_config
from biomm.data.vocab import GeneVocab
from biomm.ingest.base import IngestError, IngestSummary, QuarantineEntry, iter_with_progress
from biomm.ingest.omics_preprocess import (OmicsIngestConfig, annotate_genes, choose_matrix, highly_variable,
                                           per_cell_steps, working_adata)
from biomm.ingest.omics_read import OmicsSource, discover, read_source, source_checksum
from biomm.ingest.omics_validate import check_names
from biomm.store.atomic import atomic_path, sha256_file
from biomm.store.cohort import Cohort, _now
from biomm.store.splits import split_of

MODALITY = "omics"


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
    return a, {"state": rep.state, "notes": notes, "steps": steps, "stats": rep.stats}


def _process_chunked(src: OmicsSource, source: str, cfg: OmicsIngestConfig, out: Path, vocab: GeneVocab,
                     checksum: str) -> tuple[dict, dict, pd.DataFrame, int]:
    """Large input: HVGs from a random sample, then per-cell steps chunk by chunk, concatenated on disk."""
    matrix, var_owner, rep, notes = choose_matrix(src.adata, source)
    n = src.adata.n_obs
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=min(cfg.hvg_sample_cells, n), replace=False))
    s, steps = per_cell_steps(working_adata(src.adata, matrix, var_owner, sample), rep.state, cfg)
    hvg, hvg_step = highly_variable(s, cfg, rep.state)
    steps.append(f"{hvg_step} on a random sample of {len(sample)} cells; genes not filtered (chunked path)")
    obs_parts, cov = [], {}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        parts = []
        for a0 in range(0, n, cfg.chunk_cells):
            rows = np.arange(a0, min(a0 + cfg.chunk_cells, n))
            c, _ = per_cell_steps(working_adata(src.adata, matrix, var_owner, rows), rep.state, cfg)
            c.var["highly_variable"] = hvg
            cov = annotate_genes(c, vocab)
            c.obs["biomm_subject_id"] = [cell_subject_id(checksum, o) for o in c.obs_names]
            obs_parts.append(c.obs)
            p = Path(tmp) / f"part{a0:012d}.h5ad"
            c.write_h5ad(p)
            parts.append(p)
        # concat_on_disk picks its format from the suffix: write .h5ad, then move onto `out`
        ad.experimental.concat_on_disk(parts, Path(tmp) / "all.h5ad", merge="same")
        os.replace(Path(tmp) / "all.h5ad", out)
    info = {"state": rep.state, "notes": notes, "steps": steps, "stats": rep.stats}
    return info, cov, pd.concat(obs_parts), len(hvg)


def _attach_modalities(a: ad.AnnData, src: OmicsSource) -> dict[str, list[str]]:
    """MuData's other modalities (e.g. protein) as dense `obsm['mod_<name>']`, aligned to kept cells."""
    names = {}
    for m, other in src.extra.items():
        x = other[a.obs_names].X
        a.obsm[f"mod_{m}"] = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
        names[m] = [str(v) for v in other.var_names]
    return names


def _register_cells(cohort: Cohort, cells: pd.DataFrame, label_keys: Sequence[str], source: str) -> int:
    """Bulk insert cells as subjects (kind 'cell') with their splits and labels."""
    df = pd.DataFrame({"subject_id": cells.index.astype(str)})
    df["split"] = [split_of(s) for s in df["subject_id"]]
    now = _now()
    before = cohort.con.execute("SELECT count(*) FROM subjects").fetchall()[0][0]
    cohort.con.register("biomm_cells", df)
    cohort.con.execute("INSERT OR IGNORE INTO subjects SELECT subject_id, 'cell', 0, ?, ? FROM biomm_cells",
                       ["ingest-omics", now])
    cohort.con.execute("INSERT OR IGNORE INTO splits SELECT subject_id, split FROM biomm_cells")
    cohort.con.unregister("biomm_cells")
    for key in label_keys:
        lab = pd.DataFrame({"subject_id": df["subject_id"], "name": key,
                            "value": cells[key].astype(str).to_numpy(), "source": source})
        cohort.con.register("biomm_labels", lab)
        cohort.con.execute("DELETE FROM labels WHERE name = ? AND time IS NULL AND subject_id IN "
                           "(SELECT subject_id FROM biomm_labels)", [key])
        cohort.con.execute("INSERT INTO labels SELECT subject_id, name, value, NULL, source FROM biomm_labels")
        cohort.con.unregister("biomm_labels")
    return cohort.con.execute("SELECT count(*) FROM subjects").fetchall()[0][0] - before


def _ingest_one(cohort: Cohort, path: Path, checksum: str, cfg: OmicsIngestConfig, label_keys: list[str],
                vocab: GeneVocab, summary: IngestSummary) -> None:
    source = str(path)
    src = read_source(path, cfg.backed_above_mb, cfg.rna_modality)
    missing = [k for k in label_keys if k not in src.adata.obs.columns]
    if missing:
        raise IngestError(source, f"label column(s) {missing} not in obs; obs has {list(src.adata.obs.columns)}",
                          field="obs")
    check_names(src.adata, source)
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
                          checksum, n_cells, {"format": src.fmt, "state": info["state"], "notes": notes,
                                              "steps": info["steps"], "n_cells_in": n_in, "n_cells": n_cells,
                                              "n_genes": n_vars, "vocab_coverage": cov, "label_keys": label_keys,
                                              "chunked": chunked})
        cohort.mark_source(checksum, MODALITY, cohort.source_label(path, checksum), 1, 0)
    summary.records_written += 1
    summary.items_written += n_cells


def _uns(info: dict, cov: dict, checksum: str, cfg: OmicsIngestConfig, mods: dict | None = None) -> dict:
    out = {"source_state": info["state"], "steps": list(info["steps"]), "notes": list(info["notes"]),
           "source_checksum": checksum, "vocab_fraction": float(cov["fraction"]),
           "tokens": cfg.tokens.model_dump_json()}
    if mods:
        out["modalities"] = mods
    return out


def ingest_omics(sources: Sequence[str | Path], cohort_dir: str | Path,
                 config: OmicsIngestConfig | Mapping | str | Path | None = None,
                 label_keys: Sequence[str] = (), overrides: list[str] | None = None,
                 progress: bool = True) -> IngestSummary:
    """Ingest omics sources into a cohort; returns the run summary (exit_code 3 if anything was quarantined)."""
    t0 = time.perf_counter()
    cfg = config if isinstance(config, OmicsIngestConfig) else load_config(OmicsIngestConfig, config, overrides)
    keys = list(dict.fromkeys([*cfg.label_keys, *label_keys]))
    vocab = GeneVocab.default()
    paths = discover(sources)
    summary = IngestSummary(modality=MODALITY, cohort=str(cohort_dir))
    with Cohort(cohort_dir) as cohort:
        for path in iter_with_progress(paths, "omics", disable=not progress):
            summary.sources_seen += 1
            checksum = source_checksum(path)
            if cohort.source_done(checksum, MODALITY):
                summary.sources_skipped_unchanged += 1
                continue
            try:
                _ingest_one(cohort, path, checksum, cfg, keys, vocab, summary)
            except IngestError as err:
                cohort.quarantine(modality=MODALITY, source_path=path, reason=err.reason, field=err.field)
                cohort.mark_source(checksum, MODALITY, cohort.source_label(path, checksum), 0, 1)
                summary.quarantined += 1
                summary.quarantine.append(QuarantineEntry(source=str(path), field=err.field, reason=err.reason))
    summary.seconds = time.perf_counter() - t0
    return summary


# ---------------------------------------------------------------- write-back
def write_back(target: str | Path | ad.AnnData, embeddings: Any, key: str = "X_biomm",
               obs_columns: Mapping[str, Sequence] | None = None, cell_ids: Sequence[str] | None = None):
    """Put embeddings [n_cells, D] in `obsm[key]` and predictions in `obs` columns.

    `cell_ids` (obs names, or biomm subject ids) align rows given in another order. A path is
    rewritten atomically without loading X (obs and obsm are replaced in a copy, then renamed)."""
    emb = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings, dtype=np.float32)
    cols = {k: np.asarray(v) for k, v in (obs_columns or {}).items()}

    def align(obs: pd.DataFrame) -> np.ndarray | None:
        if cell_ids is None:
            return None
        ids = pd.Index([str(c) for c in cell_ids])
        keyed = obs["biomm_subject_id"] if "biomm_subject_id" in obs and ids[0].startswith("cell:") else obs.index
        pos = pd.Index(keyed.astype(str)).get_indexer(ids)
        if (pos < 0).any():
            raise ValueError(f"{int((pos < 0).sum())} cell ids not in the file (e.g. {ids[pos < 0][:3].tolist()})")
        return pos

    def place(obs: pd.DataFrame, arr: np.ndarray, what: str) -> np.ndarray:
        pos = align(obs)
        n = len(obs) if pos is None else len(pos)
        if len(arr) != n:
            raise ValueError(f"{what} has {len(arr)} rows but the data has {n} cells")
        if pos is None:
            return arr
        if len(pos) != len(obs):
            raise ValueError(f"{what}: cell_ids cover {len(pos)} of {len(obs)} cells; give every cell")
        out = np.empty_like(arr)
        out[pos] = arr
        return out

    if isinstance(target, ad.AnnData):
        target.obsm[key] = place(target.obs, emb, "embeddings")
        for k, v in cols.items():
            target.obs[k] = place(target.obs, v, k)
        return target
    path = Path(target)
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = ad.io.read_elem(f["obs"])
            placed = place(obs, emb, "embeddings")
            for k, v in cols.items():
                obs[k] = place(obs, v, k)
            if cols:
                del f["obs"]
                ad.io.write_elem(f, "obs", obs)
            if "obsm" not in f:
                f.create_group("obsm")
            if key in f["obsm"]:
                del f["obsm"][key]
            ad.io.write_elem(f["obsm"], key, placed)
    return path


# ---------------------------------------------------------------- cohort info
def omics_summary(cohort: Cohort) -> dict:
    """For `biomm cohort info`: files, cells, genes, input states, vocabulary coverage, label keys."""
    import json

    files = []
    for r in cohort.records(MODALITY):
        p = json.loads(r["provenance"]) if isinstance(r["provenance"], str) else (r["provenance"] or {})
        files.append({"path": r["path"], "cells": r["n_items"], "genes": p.get("n_genes"), "state": p.get("state"),
                      "format": p.get("format"), "vocab_fraction": round(p.get("vocab_coverage", {}).get("fraction", 0), 3),
                      "label_keys": p.get("label_keys", [])})
    n_q = cohort.con.execute("SELECT count(*) FROM quarantine WHERE modality = ?", [MODALITY]).fetchall()[0][0]
    return {"files": len(files), "cells": sum(f["cells"] or 0 for f in files), "quarantined": n_q, "by_file": files}


def load_omics_config(path=None, overrides=None) -> OmicsIngestConfig:
    return load_config(OmicsIngestConfig, path, overrides)
