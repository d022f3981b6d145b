"""Check an expression matrix and say what it holds: raw counts, normalised, log-normalised or scaled.

Works chunk by chunk over rows (backed files included) and never densifies the whole matrix."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
import scipy.sparse as sp

from biomm.ingest.base import IngestError

State = Literal["counts", "normalized", "log-normalized", "log", "scaled", "empty"]
COUNT_LAYERS = ("counts", "raw_counts", "count", "umi")


@dataclass
class MatrixReport:
    """What a matrix holds (counts, normalized, log, scaled, empty), its size and the reason, with statistics."""

    state: State
    n_obs: int
    n_vars: int
    nnz: int
    reason: str
    stats: dict = field(default_factory=dict)


def iter_rows(x, chunk: int = 10_000) -> Iterator[sp.csr_matrix]:
    """Row chunks of any AnnData matrix (dense, sparse, backed) as CSR."""
    n = x.shape[0]
    for a in range(0, n, chunk):
        block = x[a: min(a + chunk, n)]
        yield block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def _near_integer(v: np.ndarray, tol: float = 1e-3) -> bool:
    return v.size == 0 or float(np.mean(np.abs(v - np.round(v)) < tol)) > 0.99


def _unit_multiples(block: sp.csr_matrix) -> bool:
    """True when each row's nonzeros are integer multiples of the row's smallest nonzero:
    counts scaled per cell (normalize_total), the footprint of a normalised count matrix."""
    if block.nnz == 0:
        return False
    hits = []
    for i in range(min(block.shape[0], 200)):
        v = block.data[block.indptr[i]: block.indptr[i + 1]].astype(np.float64)
        if v.size >= 3:
            q = v / v.min()
            hits.append(np.abs(q - np.round(q)) < 0.02)
    # float32 storage blurs a few large multiples: demand 97% of all sampled entries, not every one
    return bool(hits) and float(np.concatenate(hits).mean()) > 0.97


def inspect_matrix(x, source: str, what: str = "X", chunk: int = 10_000) -> MatrixReport:
    """Scan `x` once: reject NaN/inf; detect the state from the values; IngestError on what cannot be used."""
    n_obs, n_vars = x.shape
    if n_obs == 0 or n_vars == 0:
        raise IngestError(source, f"{what} is empty ({n_obs} cells x {n_vars} genes)", field=what)
    nnz = 0
    vmin, vmax = np.inf, -np.inf
    n_neg = 0
    integer = True
    col_sum = np.zeros(n_vars)
    col_sq = np.zeros(n_vars)
    sample = None
    for a, block in zip(range(0, n_obs, chunk), iter_rows(x, chunk)):
        d = block.data
        if d.size and not np.isfinite(d).all():
            bad = np.flatnonzero(~np.isfinite(block.toarray()).all(axis=1))[0] + a
            kind = "NaN" if np.isnan(d).any() else "infinite"
            raise IngestError(source, f"{what} holds {kind} values (first in cell row {bad}); "
                                      f"fix or drop those cells", field=what)
        nnz += block.nnz
        if d.size:
            vmin, vmax = min(vmin, float(d.min())), max(vmax, float(d.max()))
            n_neg += int((d < 0).sum())
            integer = integer and _near_integer(d[:100_000])
        col_sum += np.asarray(block.sum(axis=0)).ravel()
        col_sq += np.asarray(block.multiply(block).sum(axis=0)).ravel()
        if sample is None:
            sample = block
    if nnz == 0:
        raise IngestError(source, f"{what} is empty: all {n_obs} x {n_vars} values are zero", field=what)
    mean = col_sum / n_obs
    sd = np.sqrt(np.maximum(col_sq / n_obs - mean**2, 0))
    stats = {"min": vmin, "max": vmax, "nnz": nnz, "negative_values": n_neg,
             "mean_abs_gene_mean": float(np.abs(mean).mean()), "median_gene_sd": float(np.median(sd))}
    if n_neg:
        if stats["mean_abs_gene_mean"] < 0.1 and 0.5 < stats["median_gene_sd"] < 1.5:
            return MatrixReport("scaled", n_obs, n_vars, nnz,
                                f"{what} is scaled (z-scored: gene means ~0, sd ~1, {n_neg} negative values); "
                                "expression cannot be recovered from it", stats)
        raise IngestError(source, f"{what} holds {n_neg} negative values (min {vmin:g}) but is not z-scored: "
                                  "negative counts are invalid", field=what)
    if integer:
        return MatrixReport("counts", n_obs, n_vars, nnz, f"{what} holds raw counts (non-negative integers, max {vmax:g})", stats)
    logged = sample.copy()
    logged.data = np.expm1(logged.data.astype(np.float64))
    if _unit_multiples(logged):
        return MatrixReport("log-normalized", n_obs, n_vars, nnz,
                            f"{what} is log-normalised (log1p of per-cell scaled counts, max {vmax:.3g})", stats)
    if _unit_multiples(sample):
        return MatrixReport("normalized", n_obs, n_vars, nnz,
                            f"{what} is normalised counts, not log-transformed (max {vmax:.3g})", stats)
    if vmax < 30:
        return MatrixReport("log", n_obs, n_vars, nnz,
                            f"{what} looks log-transformed (non-integer, max {vmax:.3g}) with unknown normalisation", stats)
    return MatrixReport("normalized", n_obs, n_vars, nnz,
                        f"{what} looks normalised but not log-transformed (non-integer, max {vmax:.3g})", stats)


def check_names(adata, source: str) -> None:
    """Duplicate gene or cell names make tokens and joins ambiguous: reject with examples."""
    for axis, names, what in ((1, adata.var_names, "gene"), (0, adata.obs_names, "cell")):
        if not names.is_unique:
            dups = names[names.duplicated()].unique()[:5].tolist()
            raise IngestError(source, f"{names.duplicated().sum()} duplicate {what} names (e.g. {dups}); "
                                      f"make them unique (e.g. adata.{'var' if axis else 'obs'}_names_make_unique())",
                              field="var_names" if axis else "obs_names")
