"""Out-of-core training batches from an .h5ad, in shuffled chunks (the TileDB-SOMA-ML / annbatch design).

Each epoch shuffles the order of contiguous chunks of cells, reads `preload_chunks` of them at
once (sorted by offset, one sequential HDF5 read each), shuffles cells inside that buffer and
cuts minibatches. Memory is bounded by the buffer, not the file: CSR rows are read through
slices of `indptr`, obs labels and cell ids chunk by chunk. Hand-written on h5py because
annbatch needs Python >= 3.12 and AnnLoader reads random rows one batch at a time.

Each batch is a dict: `genes` [B,T] long (0 = pad), `values` [B,T] float, `mask` [B,T] bool
(for the transformer adapter; `tokens` output), `x` [B,n_hvg] float (for the MLP adapter; `x`
output), `labels` {obs column: LongTensor codes (-1 = missing) or FloatTensor}, `cell_ids`
(obs names) and `subject_ids` (cohort subject ids when the file came through `biomm ingest omics`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal, Sequence

import h5py
import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from biomm.config import StrictModel
from biomm.vocab.tokenizers import GeneTokenizer, GeneTokenizerConfig
from biomm.vocab.genes import GeneVocab


class OmicsLoaderConfig(StrictModel):
    """Config of the out-of-core .h5ad cell loader: batches, chunked shuffle, outputs, labels, tokenizer."""

    batch_size: int = Field(256, ge=1)
    chunk_size: int = Field(64, ge=1, description="Contiguous cells per chunk (one sequential read)")
    preload_chunks: int = Field(32, ge=1, description="Chunks read into the shuffle buffer at once")
    outputs: list[Literal["tokens", "x"]] = Field(default_factory=lambda: ["tokens", "x"])
    layer: str | None = Field(None, description="Matrix to read: None = X (log-normalised after ingest)")
    hvg_only: bool = Field(True, description="`x` holds only var['highly_variable'] genes (all genes if absent)")
    x_mapped_only: bool = Field(False, description="`x` leaves out genes without a gene-vocabulary id (the mlp "
                                                   "encoder's positions are named by vocabulary id)")
    label_keys: list[str] = Field(default_factory=list)
    tokens: GeneTokenizerConfig = GeneTokenizerConfig()
    tokens_hvg_only: bool = Field(False, description="Gene tokens only from var['highly_variable'] genes; with "
                                                     "tokens.top_k >= the HVG count, every expressed HVG is a token")
    trim_tokens: bool = Field(False, description="Cut `tokens` to the longest cell of each batch (no all-pad columns)")
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0
    in_memory: Literal["auto", "always", "never"] = Field(
        "auto", description="Read the whole matrix once and batch from memory (fully shuffled): auto = when it "
                            "takes under `memory_fraction` of the available memory; else shuffled chunks from disk")
    memory_fraction: float = Field(0.25, gt=0, le=1, description="in_memory auto: the share of available memory the matrix may take")


def _decode(a: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in a]


class _H5Cells:
    """Row-range reads of one .h5ad: the matrix (CSR or dense), obs columns and the obs index."""

    def __init__(self, path: Path, layer: str | None):
        self.f = h5py.File(path, "r")
        self.x = self.f["X"] if layer is None else self.f["layers"][layer]
        self.sparse = isinstance(self.x, h5py.Group)
        if self.sparse and self.x.attrs.get("encoding-type", "csr_matrix") != "csr_matrix":
            raise ValueError(f"{path}: the loader reads row-major CSR matrices; this one is "
                             f"{self.x.attrs.get('encoding-type')} (rewrite it as CSR)")
        self.shape = tuple(self.x.attrs["shape"]) if self.sparse else self.x.shape
        obs = self.f["obs"]
        self.obs = obs
        self.index_key = obs.attrs.get("_index", "_index")
        # dataset handles looked up once: an h5py group lookup per chunk read costs as much as the read
        self.index = obs[self.index_key]
        if self.sparse:
            self.indptr, self.data, self.indices = self.x["indptr"], self.x["data"], self.x["indices"]

    def rows(self, a: int, b: int) -> sp.csr_matrix:
        if not self.sparse:
            return sp.csr_matrix(self.x[a:b], dtype=np.float32)
        ptr = self.indptr[a: b + 1]
        lo, hi = int(ptr[0]), int(ptr[-1])
        return sp.csr_matrix((self.data[lo:hi].astype(np.float32, copy=False), self.indices[lo:hi],
                              ptr - lo), shape=(b - a, self.shape[1]))

    def column(self, key: str, a: int, b: int) -> np.ndarray:
        col = self.obs[key]
        return col["codes"][a:b] if isinstance(col, h5py.Group) else col[a:b]

    def categories(self, key: str) -> list[str] | None:
        col = self.obs[key]
        return _decode(col["categories"][:]) if isinstance(col, h5py.Group) else None

    def var_column(self, key: str) -> np.ndarray | None:
        var = self.f["var"]
        if key not in var:
            return None
        col = var[key]
        return col["codes"][:] if isinstance(col, h5py.Group) else col[:]

    def var_names(self) -> list[str]:
        var = self.f["var"]
        return _decode(var[var.attrs.get("_index", "_index")][:])


class CellChunkDataset(IterableDataset):
    """Shuffled-chunk minibatches of one .h5ad (see module doc). `rows`: optional subset (e.g. a split)."""

    def __init__(self, path: str | Path, config: OmicsLoaderConfig | None = None,
                 rows: Sequence[int] | None = None, rank: int = 0, world_size: int = 1):
        self.path = Path(path)
        self.cfg = config or OmicsLoaderConfig()
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        h = _H5Cells(self.path, self.cfg.layer)
        try:
            self.n_obs, self.n_vars = h.shape
            missing = [k for k in self.cfg.label_keys if k not in h.obs]
            if missing:
                raise KeyError(f"{self.path}: obs has no column(s) {missing}")
            self.label_categories = {k: h.categories(k) for k in self.cfg.label_keys}
            vocab_ids = h.var_column("vocab_id")
            self.var_token_ids = (np.asarray(vocab_ids, dtype=np.int64) if vocab_ids is not None
                                  else GeneVocab.default().lookup(h.var_names()))
            hvg = h.var_column("highly_variable") if (self.cfg.hvg_only or self.cfg.tokens_hvg_only) else None
            self.x_columns = (np.flatnonzero(hvg.astype(bool)) if hvg is not None and self.cfg.hvg_only
                              else np.arange(self.n_vars))
            if self.cfg.x_mapped_only:
                self.x_columns = self.x_columns[self.var_token_ids[self.x_columns] > GeneVocab.unk_id]
            self.has_subject_ids = "biomm_subject_id" in h.obs
        finally:
            h.f.close()
        self.rows = None if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        token_ids = self.var_token_ids
        if self.cfg.tokens_hvg_only and hvg is not None:
            token_ids = np.where(hvg.astype(bool), token_ids, GeneVocab.unk_id)
        self.tokenizer = GeneTokenizer(token_ids, self.cfg.tokens)
        self.memory = self._load_memory() if self._fits_memory() else None

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch for a new shuffle (same across ranks: they split one permutation)."""
        self.epoch = epoch

    def _chunks(self) -> list[tuple[int, int]]:
        n = self.n_obs if self.rows is None else len(self.rows)
        c = self.cfg.chunk_size
        chunks = [(a, min(a + c, n)) for a in range(0, n, c)]
        if self.cfg.shuffle:
            order = np.random.default_rng((self.cfg.seed, self.epoch)).permutation(len(chunks))
            chunks = [chunks[i] for i in order]
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards = self.world_size * n_workers
        return chunks[self.rank * n_workers + worker:: shards]

    def __len__(self) -> int:
        n = self.n_obs if self.rows is None else len(self.rows)
        n = -(-n // self.world_size)
        return n // self.cfg.batch_size if self.cfg.drop_last else -(-n // self.cfg.batch_size)

    def _read(self, h: _H5Cells, a: int, b: int) -> tuple[sp.csr_matrix, dict, list[str], list[str]]:
        if self.rows is None:
            lo, hi, pick = a, b, None
        else:  # a subset: read the span once, keep the chosen rows
            lo, hi = int(self.rows[a]), int(self.rows[b - 1]) + 1
            pick = self.rows[a:b] - lo
        x = h.rows(lo, hi)
        labels = {k: h.column(k, lo, hi) for k in self.cfg.label_keys}
        ids = _decode(h.index[lo:hi])
        subj = _decode(h.obs["biomm_subject_id"][lo:hi]) if self.has_subject_ids else []
        if pick is not None:
            x = x[pick]
            labels = {k: v[pick] for k, v in labels.items()}
            ids = [ids[i] for i in pick]
            subj = [subj[i] for i in pick] if subj else []
        return x, labels, ids, subj

    def _batch(self, x: sp.csr_matrix, labels: dict, ids: list[str], subj: list[str]) -> dict:
        out: dict = {}
        if "tokens" in self.cfg.outputs:
            out.update(trim_tokens(self.tokenizer(x)) if self.cfg.trim_tokens else self.tokenizer(x))
        if "x" in self.cfg.outputs:
            out["x"] = torch.from_numpy((x if len(self.x_columns) == self.n_vars else x[:, self.x_columns]).toarray())
        out["labels"] = {k: torch.from_numpy(v.astype(np.int64 if self.label_categories[k] is not None else np.float32))
                         for k, v in labels.items()}
        out["cell_ids"] = ids
        out["subject_ids"] = subj or list(ids)
        return out

    def _fits_memory(self) -> bool:
        """Whether to batch from memory: `in_memory`, or (auto) the matrix as float32 CSR under the memory share."""
        if self.cfg.in_memory != "auto":
            return self.cfg.in_memory == "always"
        import psutil

        h = _H5Cells(self.path, self.cfg.layer)
        try:
            nnz = h.x["data"].shape[0] if h.sparse else self.n_obs * self.n_vars
        finally:
            h.f.close()
        need = nnz * (4 + 8) + 8 * (self.n_obs + 1)  # float32 values, int64 indices, indptr
        return need < self.cfg.memory_fraction * psutil.virtual_memory().available

    def _load_memory(self) -> tuple[sp.csr_matrix, dict, list[str], list[str]]:
        """The whole matrix (of `rows`, when a subset), its labels, cell ids and subject ids, read once."""
        h = _H5Cells(self.path, self.cfg.layer)
        try:
            x = h.rows(0, self.n_obs)
            labels = {k: h.column(k, 0, self.n_obs) for k in self.cfg.label_keys}
            ids = _decode(h.obs[h.index_key][:])
            subj = _decode(h.obs["biomm_subject_id"][:]) if self.has_subject_ids else []
        finally:
            h.f.close()
        if self.rows is not None:
            x = x[self.rows]
            labels = {k: v[self.rows] for k, v in labels.items()}
            ids = [ids[i] for i in self.rows]
            subj = [subj[i] for i in self.rows] if subj else []
        return x, labels, ids, subj

    def _iter_memory(self) -> Iterator[dict]:
        """Minibatches from the matrix in memory: one permutation of all cells per epoch (same on every rank),
        strided across ranks and workers."""
        x, labels, ids, subj = self.memory
        n = x.shape[0]
        order = (np.random.default_rng((self.cfg.seed, self.epoch)).permutation(n) if self.cfg.shuffle
                 else np.arange(n))
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        order = order[self.rank * n_workers + worker:: self.world_size * n_workers]
        bs = self.cfg.batch_size
        for s in range(0, len(order), bs):
            sel = np.sort(order[s: s + bs])  # sorted rows: faster CSR gathers; the batch is still a random draw
            if len(sel) < bs and self.cfg.drop_last:
                break
            yield self._batch(x[sel], {k: v[sel] for k, v in labels.items()}, [ids[i] for i in sel],
                              [subj[i] for i in sel] if subj else [])

    def __iter__(self) -> Iterator[dict]:
        if self.memory is not None:
            yield from self._iter_memory()
            return
        chunks = self._chunks()
        rng = np.random.default_rng((self.cfg.seed, self.epoch, self.rank, 1))
        bs, k = self.cfg.batch_size, self.cfg.preload_chunks
        h = _H5Cells(self.path, self.cfg.layer)
        carry = None
        try:
            for g in range(0, len(chunks), k):
                group = sorted(chunks[g: g + k])  # read in file order: sequential I/O
                parts = [self._read(h, a, b) for a, b in group]
                x = sp.vstack([p[0] for p in parts], format="csr")
                labels = {key: np.concatenate([p[1][key] for p in parts]) for key in self.cfg.label_keys}
                ids = [i for p in parts for i in p[2]]
                subj = [i for p in parts for i in p[3]]
                if carry is not None:  # cells left over from the last buffer start this one
                    x = sp.vstack([carry[0], x], format="csr")
                    labels = {key: np.concatenate([carry[1][key], labels[key]]) for key in labels}
                    ids, subj = carry[2] + ids, carry[3] + subj
                perm = rng.permutation(x.shape[0]) if self.cfg.shuffle else np.arange(x.shape[0])
                last = g + k >= len(chunks)
                n_full = (len(perm) // bs) * bs
                for s in range(0, n_full if not last else len(perm), bs):
                    sel = perm[s: s + bs]
                    if len(sel) < bs and self.cfg.drop_last:
                        break
                    yield self._batch(x[sel], {key: v[sel] for key, v in labels.items()},
                                      [ids[i] for i in sel], [subj[i] for i in sel] if subj else [])
                rest = perm[n_full:]
                carry = None if last or not len(rest) else (
                    x[rest], {key: v[rest] for key, v in labels.items()}, [ids[i] for i in rest],
                    [subj[i] for i in rest] if subj else [])
        finally:
            h.f.close()


def trim_tokens(tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`genes` / `values` / `mask` [B, T] cut to the longest cell's length (at least 1)."""
    n = max(int(tokens["mask"].sum(1).max()) if tokens["mask"].numel() else 0, 1)
    return {k: v[:, :n] for k, v in tokens.items()}


def omics_dataloader(path: str | Path, config: OmicsLoaderConfig | None = None, num_workers: int = 0,
                     rows: Sequence[int] | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A torch DataLoader over `CellChunkDataset` (batches are built by the dataset: batch_size=None)."""
    ds = CellChunkDataset(path, config, rows=rows, rank=rank, world_size=world_size)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
