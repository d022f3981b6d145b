"""Real PBMC cells as raw counts, for tests, the demo and the loader benchmark.

scanpy's bundled `pbmc68k_reduced` keeps log1p(normalised counts) in `.raw`; each cell's
smallest nonzero value is one UMI, so `round(expm1(raw) / min)` gives back its integer counts
(exact for > 99.9% of entries)."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp


def pbmc_counts() -> ad.AnnData:
    """700 PBMCs x 765 genes, integer UMI counts in X, obs from pbmc68k_reduced (bulk_labels, ...)."""
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.X.tocsr().astype(np.float64)
    raw.data = np.expm1(raw.data)
    unit = np.array([raw.data[raw.indptr[i]: raw.indptr[i + 1]].min() for i in range(raw.shape[0])])
    counts = sp.diags(1.0 / unit) @ raw
    counts.data = np.round(counts.data)
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.eliminate_zeros()
    obs = src.obs[["bulk_labels", "louvain", "phase"]].copy()
    return ad.AnnData(X=counts, obs=obs, var=src.raw.var[[]].copy())


def tiled_pbmc(n_cells: int, path: str | Path, seed: int = 0, chunk: int = 20_000) -> Path:
    """Write an .h5ad of `n_cells` by tiling the real PBMC counts with Poisson noise (each copy's counts
    resampled as Poisson(count)), chunk by chunk so memory stays flat. Cell names stay unique."""
    base = pbmc_counts()
    rng = np.random.default_rng(seed)
    parts = []
    path = Path(path)
    tmpdir = path.parent / f".{path.stem}.parts"
    tmpdir.mkdir(parents=True, exist_ok=True)
    for a in range(0, n_cells, chunk):
        m = min(chunk, n_cells - a)
        idx = np.arange(a, a + m) % base.n_obs
        x = base.X[idx].tocsr().copy()
        x.data = rng.poisson(x.data).astype(np.float32)
        x.eliminate_zeros()
        obs = base.obs.iloc[idx].copy()
        obs.index = [f"{name}-t{(a + i) // base.n_obs}" for i, name in enumerate(obs.index)]
        p = tmpdir / f"{a:012d}.h5ad"
        ad.AnnData(X=x, obs=obs, var=base.var.copy()).write_h5ad(p)
        parts.append(p)
    ad.experimental.concat_on_disk(parts, path)
    for p in parts:
        p.unlink()
    tmpdir.rmdir()
    return path
