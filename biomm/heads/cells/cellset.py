"""Cells seen through a trained model: an .h5ad (the cohort's, or any other) -> omics tensors and embeddings.

Rows are read in chunks from a backed AnnData, so memory follows the chunk, not the file. Genes map
to the model's vocabulary by `var["vocab_id"]` (written by `biomm ingest omics`) or by name; a
gene the model has no embedding for is left out of the tokens, never mapped to a wrong row."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from biomm.vocab.tokenizers import GeneTokenizer
from biomm.vocab.genes import UNK, GeneVocab
from biomm.schema import QueryError
from biomm.store.cohort import Cohort


@dataclass
class CellSet:
    """A selection of rows of one .h5ad, with what is needed to tokenise them for one model."""

    path: Path
    rows: np.ndarray  # sorted row indices into the file
    ids: list[str]  # cohort subject ids (obs biomm_subject_id) or obs names
    obs: pd.DataFrame  # the selected rows' obs
    var_token_ids: np.ndarray  # per column; UNK where the model has no embedding for the gene
    symbols: list[str]  # per column
    hvg: np.ndarray | None = None  # per column: var["highly_variable"] (None when the file has no such column)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions: np.ndarray) -> "CellSet":
        """The cells at `positions` (indices into this selection)."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        return CellSet(self.path, self.rows[positions], [self.ids[i] for i in positions],
                       self.obs.iloc[positions], self.var_token_ids, self.symbols, self.hvg)

    def column(self, symbol_or_id: str) -> int:
        """Column of a gene given by symbol (case-insensitive) or any name the gene vocabulary knows."""
        upper = [s.upper() for s in self.symbols]
        key = symbol_or_id.strip().upper()
        if key in upper:
            return upper.index(key)
        tid = GeneVocab.default().token_id(symbol_or_id)
        hits = np.flatnonzero(self.var_token_ids == tid) if tid != UNK else []
        if len(hits):
            return int(hits[0])
        raise QueryError(f"gene {symbol_or_id!r} is not among the {len(self.symbols)} genes of {self.path.name}")


def cohort_cells_file(cohort: str | Path) -> Path:
    """The cohort's one omics file (cell cohorts hold one)."""
    with Cohort(cohort, create=False, read_only=True) as c:
        files = sorted({r["path"] for r in c.records("omics")})
    if len(files) != 1:
        raise QueryError(f"cohort {cohort} has {len(files)} omics files; the virtual cell reads one")
    return Path(cohort) / files[0]


def cohort_splits(cohort: str | Path) -> dict[str, str]:
    """subject id -> split (train / val / test) for the cohort's cells."""
    with Cohort(cohort, create=False, read_only=True) as c:
        return c.split_map()


def open_cells(path: str | Path, n_genes: int, max_cells: int | None = None,
               rows: np.ndarray | None = None) -> CellSet:
    """Select cells of an .h5ad (`rows`, else the first `max_cells`, else all) for a model of `n_genes` genes."""
    path = Path(path)
    if not path.exists():
        raise QueryError(f"cell file not found: {path}")
    try:
        a = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # not an h5ad, or a broken one: say which file
        raise QueryError(f"{path} is not a readable .h5ad file: {exc}") from None
    try:
        n = a.n_obs
        sel = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(sel) and (sel[0] < 0 or sel[-1] >= n):
            raise QueryError(f"row indices outside 0..{n - 1} of {path.name}")
        if max_cells is not None:
            sel = sel[:max_cells]
        obs = a.obs.iloc[sel].copy()
        ids = list(obs["biomm_subject_id"].astype(str)) if "biomm_subject_id" in obs else list(obs.index.astype(str))
        var = a.var
        names = list(var.index.astype(str))
        ids_col = var["vocab_id"].to_numpy(np.int64) if "vocab_id" in var else GeneVocab.default().lookup(names)
        symbols = list(var["gene_symbol"].astype(str)) if "gene_symbol" in var else names
        hvg = var["highly_variable"].to_numpy(bool) if "highly_variable" in var else None
    finally:
        a.file.close()
    tokens = np.where(ids_col < n_genes, ids_col, UNK)
    if not (tokens > UNK).any():
        raise QueryError(f"none of the {len(names)} genes of {path.name} is in the model's gene vocabulary")
    return CellSet(path, sel, ids, obs, tokens, symbols, hvg)


def read_rows(cells: CellSet, start: int, stop: int, layer: str | None = None) -> sp.csr_matrix:
    """Expression of selected cells `start:stop` (positions in the selection) as CSR float32."""
    a = ad.read_h5ad(cells.path, backed="r")
    try:
        rows = cells.rows[start:stop]
        span = a.X if layer is None else a.layers[layer]
        x = span[int(rows[0]): int(rows[-1]) + 1] if len(rows) else span[0:0]
        x = sp.csr_matrix(x, dtype=np.float32)[rows - rows[0]] if len(rows) else sp.csr_matrix(x, dtype=np.float32)
    finally:
        a.file.close()
    if x.nnz and x.data.min() < 0:
        raise QueryError(f"{cells.path.name} holds negative values (scaled data?); give log-normalised "
                         "expression, as `biomm ingest omics` writes")
    return x


def iter_chunks(cells: CellSet, batch_size: int, layer: str | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
    """(start position, CSR rows) chunks over the selection."""
    for s in range(0, len(cells), batch_size):
        yield s, read_rows(cells, s, min(s + batch_size, len(cells)), layer)


def tokenizer_for(loaded, cells: CellSet) -> GeneTokenizer:
    """The model's gene tokenizer (its training config) over this file's columns (HVGs only when it trained so)."""
    ids = cells.var_token_ids
    if loaded.config.data.omics.tokens_hvg_only and cells.hvg is not None:
        ids = np.where(cells.hvg, ids, UNK)
    return GeneTokenizer(ids, loaded.config.data.omics.tokens)


def omics_config(loaded):
    """The omics adapter config of a cell model; QueryError when it has none."""
    omics = loaded.model.config.adapters.get("omics")
    if omics is None:
        raise QueryError(f"model {loaded.folder.name} has no omics adapter; the virtual cell needs a cell model")
    return omics


def n_genes_of(loaded) -> int:
    """The gene-vocabulary bound of a cell model: token ids below it have an embedding (or an HVG position)."""
    omics = omics_config(loaded)
    if omics.encoder == "mlp":
        if not omics.gene_ids:
            raise QueryError(f"model {loaded.folder.name}: its mlp omics encoder does not record its HVGs (gene_ids)")
        return max(omics.gene_ids) + 1
    return omics.n_genes


def hvg_positions(loaded, cells: CellSet) -> np.ndarray:
    """mlp models: for each position of the model's HVG vector, this file's column of that gene (-1: absent)."""
    col_of = {int(t): i for i, t in enumerate(cells.var_token_ids) if t > UNK}
    return np.array([col_of.get(int(g), -1) for g in omics_config(loaded).gene_ids], dtype=np.int64)


def hvg_matrix(x: sp.csr_matrix, positions: np.ndarray) -> np.ndarray:
    """Dense [B, N] HVG vector of CSR rows `x`; positions -1 (gene absent from the file) are 0."""
    out = np.zeros((x.shape[0], len(positions)), dtype=np.float32)
    ok = positions >= 0
    out[:, ok] = x[:, positions[ok]].toarray()
    return out


class OmicsInputs:
    """CSR rows of a file -> the model's omics tensors: `x` [B, N] (mlp) or trimmed tokens [B, T] (transformer)."""

    def __init__(self, loaded, cells: CellSet):
        self.mlp = omics_config(loaded).encoder == "mlp"
        self.positions = hvg_positions(loaded, cells) if self.mlp else None
        if self.mlp and not (self.positions >= 0).any():
            raise QueryError(f"none of the model's highly variable genes is in {cells.path.name}")
        self.tokenizer = None if self.mlp else tokenizer_for(loaded, cells)

    def __call__(self, x: sp.csr_matrix) -> dict[str, torch.Tensor]:
        if self.mlp:
            return {"x": torch.from_numpy(hvg_matrix(x, self.positions))}
        t = self.tokenizer(x)
        n = max(int(t["mask"].sum(1).max()) if len(x.indptr) > 1 else 0, 1)
        return {k: v[:, :n] for k, v in t.items()}


@torch.no_grad()
def embed_cells(loaded, cells: CellSet, batch_size: int = 256) -> np.ndarray:
    """Each cell's omics embedding [N, D] (the omics modality alone: no label text leaks in)."""
    inputs = OmicsInputs(loaded, cells)
    out = []
    for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        out.append(loaded.model.embed("omics", inputs(x)).float().numpy())
    if not out:
        raise QueryError(f"no cells selected in {cells.path.name}")
    return np.concatenate(out)
