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


# Canonical PBMC markers, as in the scanpy / Seurat PBMC 3k tutorials: each Leiden cluster takes the type
# whose markers it expresses most (mean of the markers' z-scored log expression over the cluster's cells).
PBMC3K_MARKERS = {
    "CD4 T": ["IL7R", "CCR7", "LDHB"],
    "CD8 T": ["CD8A", "CD8B"],
    "NK": ["GNLY", "NKG7", "GZMB"],
    "B": ["MS4A1", "CD79A", "CD79B"],
    "CD14 Monocyte": ["CD14", "LYZ", "S100A8"],
    "FCGR3A Monocyte": ["FCGR3A", "MS4A7"],
    "Dendritic": ["FCER1A", "CST3"],
    "Megakaryocyte": ["PPBP", "PF4"],
}


def pbmc3k_path() -> Path:
    """The 10x Genomics PBMC 3k raw counts (2,700 cells x 32,738 genes) as shipped in the `desc` package
    (MIT; installed `--no-deps` by the Makefile, read in place). Raises FileNotFoundError when absent."""
    import importlib.util

    spec = importlib.util.find_spec("desc")
    path = Path(spec.origin).parent / "datasets" / "pbmc.h5ad" if spec and spec.origin else None
    if path is None or not path.exists():
        raise FileNotFoundError("the PBMC 3k counts ship with the `desc` package: "
                                "pip install --no-deps desc==0.1.4.1 (make venv does)")
    return path


def pbmc3k_counts(resolution: float = 1.0, seed: int = 0) -> ad.AnnData:
    """PBMC 3k after the tutorials' QC (>= 200 genes per cell, < 2,500 genes, < 5% mitochondrial; genes
    in >= 3 cells): integer UMI counts in X, obs['cell_type'] from Leiden clusters (igraph) of the
    normalised, log1p, HVG, scaled, 40-PC neighbour graph, each cluster named by PBMC3K_MARKERS.
    About 2,640 cells x 13,700 genes, 8 types. The labels are derived (no curated annotation ships offline)."""
    import scanpy as sc

    a = ad.read_h5ad(pbmc3k_path())
    a.var_names_make_unique()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    sc.pp.filter_cells(a, min_genes=200)
    sc.pp.filter_genes(a, min_cells=3)
    a.var["mt"] = a.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(a, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    a = a[(a.obs["n_genes"] < 2500).to_numpy() & (a.obs["pct_counts_mt"] < 5).to_numpy()].copy()
    w = a.copy()
    sc.pp.normalize_total(w, target_sum=1e4)
    sc.pp.log1p(w)
    sc.pp.highly_variable_genes(w, min_mean=0.0125, max_mean=3, min_disp=0.5)
    logged = w.copy()
    w = w[:, w.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(w, max_value=10)
    sc.pp.pca(w, n_comps=40, random_state=seed)
    sc.pp.neighbors(w, n_neighbors=10, n_pcs=40, random_state=seed)
    sc.tl.leiden(w, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    clusters = w.obs["leiden"].astype(str).to_numpy()
    names = list(PBMC3K_MARKERS)
    markers = {t: [g for g in PBMC3K_MARKERS[t] if g in logged.var_names] for t in names}
    genes = sorted({g for gs in markers.values() for g in gs})
    expr = logged[:, genes].X  # only the marker columns are z-scored (the whole matrix is 2,638 x 13,714)
    expr = expr.toarray() if sp.issparse(expr) else np.asarray(expr)
    z = (expr - expr.mean(0)) / np.maximum(expr.std(0), 1e-6)
    col = {g: i for i, g in enumerate(genes)}
    label = {}
    for c in np.unique(clusters):
        rows = clusters == c
        score = [z[np.ix_(rows, [col[g] for g in markers[t]])].mean() for t in names]
        label[c] = names[int(np.argmax(score))]
    obs = a.obs[["n_genes"]].copy()
    obs["leiden"] = clusters
    obs["cell_type"] = [label[c] for c in clusters]
    out = ad.AnnData(X=a.X.tocsr(), obs=obs, var=a.var[["gene_ids"]].copy())
    out.obs["cell_type"] = out.obs["cell_type"].astype("category")
    return out
