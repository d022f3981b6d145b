"""The scanpy recipe, chosen by what the matrix holds: QC metrics, cell/gene filters,
normalize_total (counts only), log1p (counts, CPM and FPKM / RPKM / TPM values) and highly variable
genes (a counts-only flavour switches to `seurat` on other input, with the reason in the steps);
raw counts kept in `layers["counts"]`. An all-zero gene or a cell with one expressed gene passes
through without NaN or overflow."""
from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from biomm.ingest.base import IngestError
from biomm.ingest.omics.config import OmicsIngestConfig
from biomm.ingest.omics.validate import COUNT_LAYERS, MatrixReport, inspect_matrix
from biomm.vocab.genes import GeneVocab


def choose_matrix(adata: ad.AnnData, source: str) -> tuple[object, ad.AnnData | None, MatrixReport, list[str]]:
    """Pick the expression matrix to use: a counts layer first, else X, else `.raw` when X is scaled.

    Returns (matrix, var frame owner (None = adata.var), report, notes); refuses with a reason."""
    notes = []
    for name in COUNT_LAYERS:
        if name in adata.layers:
            rep = inspect_matrix(adata.layers[name], source, f"layers['{name}']")
            if rep.state == "counts":
                notes.append(f"using {rep.reason}")
                return adata.layers[name], None, rep, notes
            notes.append(f"layers['{name}'] ignored: {rep.reason}")
    rep = inspect_matrix(adata.X, source, "X")
    if rep.state != "scaled":
        notes.append(rep.reason)
        return adata.X, None, rep, notes
    if adata.raw is not None:
        raw_rep = inspect_matrix(adata.raw.X, source, ".raw.X")
        if raw_rep.state != "scaled":
            notes.append(f"{rep.reason}; using .raw instead: {raw_rep.reason}")
            return adata.raw.X, adata.raw.to_adata(), raw_rep, notes
    raise IngestError(source, f"{rep.reason}, and there is no .raw or counts layer to use instead: "
                              "supply raw counts (or log-normalised values)", field="X")


def working_adata(adata: ad.AnnData, matrix, var_owner, rows=slice(None)) -> ad.AnnData:
    """A fresh in-memory AnnData of the chosen matrix (float32 CSR) for `rows`."""
    x = matrix[rows]
    x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr().astype(np.float32)
    var = (var_owner.var if var_owner is not None else adata.var).copy()
    return ad.AnnData(X=x, obs=adata.obs.iloc[rows].copy(), var=var)


def per_cell_steps(a: ad.AnnData, state: str, cfg: OmicsIngestConfig) -> tuple[ad.AnnData, list[str]]:
    """QC metrics, cell filters, normalize_total and log1p as the state needs; returns the kept cells."""
    steps = []
    a.var["mt"] = a.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(a, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = a.obs["n_genes_by_counts"].to_numpy() >= cfg.qc.min_genes
    steps.append(f"filter_cells(min_genes={cfg.qc.min_genes})")
    if state == "counts" and cfg.qc.max_pct_mito is not None:
        keep &= a.obs["pct_counts_mt"].to_numpy() <= cfg.qc.max_pct_mito
        steps.append(f"pct_counts_mt <= {cfg.qc.max_pct_mito}")
    a = a[keep].copy()
    if state == "counts":
        a.layers["counts"] = a.X.copy()
        sc.pp.normalize_total(a, target_sum=cfg.target_sum)
        steps.append(f"normalize_total(target_sum={cfg.target_sum:g})")
    if state in ("counts", "normalized", "length-normalized"):
        if state == "length-normalized":  # FPKM / TPM: already normalised per cell and gene length
            steps.append("normalize_total skipped (length-normalised input)")
        sc.pp.log1p(a)
        steps.append("log1p")
    return a, steps


def highly_variable(a: ad.AnnData, cfg: OmicsIngestConfig, state: str) -> tuple[np.ndarray, str]:
    """Boolean mask of highly variable genes over `a`'s genes."""
    flavor, why = cfg.hvg_flavor, ""
    if flavor == "seurat_v3" and "counts" not in a.layers:
        flavor = "seurat"
        why = f" (seurat_v3 models raw counts; this input is {state}: switched to seurat)"
    x = a.layers["counts"] if flavor == "seurat_v3" else a.X
    sq = x.multiply(x) if sp.issparse(x) else np.square(x)
    mean = np.asarray(x.mean(0)).ravel()
    varies = np.asarray(sq.mean(0)).ravel() - mean**2 > 0  # an all-zero or constant gene has no dispersion
    hv = np.zeros(a.n_vars, dtype=bool)
    n = min(cfg.n_top_genes, int(varies.sum()))
    if n == 0:
        return hv, "highly_variable_genes: no gene varies across cells (none flagged)"
    sub = a[:, varies]
    kw = {"layer": "counts"} if flavor == "seurat_v3" else {}
    if n >= sub.n_vars:
        hv[varies] = True
        return hv, f"highly_variable_genes: all {n} varying genes flagged (n_top_genes={cfg.n_top_genes}){why}"
    res = sc.pp.highly_variable_genes(sub, n_top_genes=n, flavor=flavor, inplace=False, **kw)
    hv[np.flatnonzero(varies)] = res["highly_variable"].to_numpy(dtype=bool)
    return hv, f"highly_variable_genes(n_top_genes={n}, flavor={flavor}){why}"


def annotate_genes(a: ad.AnnData, vocab: GeneVocab) -> dict:
    """var['vocab_id'] (token id, <unk> when unmapped) and var['gene_symbol']; returns the coverage."""
    cov = vocab.coverage(a.var_names)
    ids = vocab.lookup(a.var_names)
    a.var["vocab_id"] = ids
    a.var["gene_symbol"] = [vocab.symbol(i) if i > vocab.unk_id else "" for i in ids]
    return cov
