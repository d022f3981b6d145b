"""Check an expression matrix and say what it holds: raw counts, per-cell normalised counts (CPM,
normalize_total), length-normalised values (FPKM / RPKM / TPM: non-integer, non-negative, unlogged),
log-normalised values, or scaled (z-scored) values.

Works chunk by chunk over rows (backed files included), never densifies the whole matrix and never
exponentiates a value that could overflow (expm1 runs only on matrices whose maximum is below 30)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from biomm.ingest.base import IngestError

State = Literal["counts", "normalized", "length-normalized", "log-normalized", "log", "scaled", "empty"]
LOG_MAX = 30.0  # log1p of any real expression value stays far below this; above it the values are not logged
COUNT_LAYERS = ("counts", "raw_counts", "count", "umi")


@dataclass
class MatrixReport:
    """What a matrix holds (counts, normalized, log, scaled, empty), its size and the reason, with statistics."""

    state: State
    kind: str  # the value kind in words: "raw counts", "CPM", "TPM", "FPKM/RPKM", "log1p(normalised counts)", ...
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
            return MatrixReport("scaled", "z-scored", n_obs, n_vars, nnz,
                                f"{what} is scaled (z-scored: gene means ~0, sd ~1, {n_neg} negative values); "
                                "expression cannot be recovered from it", stats)
        raise IngestError(source, f"{what} holds {n_neg} negative values (min {vmin:g}) but is not z-scored: "
                                  "negative counts are invalid", field=what)
    if integer:
        return MatrixReport("counts", "raw counts", n_obs, n_vars, nnz,
                            f"{what} holds raw counts (non-negative integers, max {vmax:g})", stats)
    if vmax < LOG_MAX:
        logged = sample.copy()
        logged.data = np.expm1(logged.data.astype(np.float64))  # safe: every value is below LOG_MAX
        if _unit_multiples(logged):
            return MatrixReport("log-normalized", "log1p(normalised counts)", n_obs, n_vars, nnz,
                                f"{what} is log-normalised (log1p of per-cell scaled counts, max {vmax:.3g})", stats)
        return MatrixReport("log", "log (unknown normalisation)", n_obs, n_vars, nnz,
                            f"{what} looks log-transformed (non-integer, max {vmax:.3g}) with unknown normalisation", stats)
    row_sums = np.asarray(sample.sum(axis=1)).ravel()
    row_sums = row_sums[row_sums > 0]
    # CPM / TPM cells sum to a million (a few genes zeroed or dropped move that little)
    per_million = row_sums.size > 0 and float(np.mean(np.abs(row_sums / 1e6 - 1) < 0.05)) > 0.9
    stats["median_cell_total"] = float(np.median(row_sums)) if row_sums.size else 0.0
    if _unit_multiples(sample):
        kind = "CPM" if per_million else "per-cell scaled counts"
        return MatrixReport("normalized", kind, n_obs, n_vars, nnz,
                            f"{what} holds {kind} (counts scaled per cell, not log-transformed, max {vmax:.3g})", stats)
    kind = "TPM" if per_million else "FPKM/RPKM"
    return MatrixReport("length-normalized", kind, n_obs, n_vars, nnz,
                        f"{what} holds length-normalised values ({kind}: non-integer, non-negative, not logged, "
                        f"max {vmax:.3g})", stats)


def check_names(adata, source: str) -> None:
    """Duplicate gene or cell names make tokens and joins ambiguous: reject with examples."""
    for axis, names, what in ((1, adata.var_names, "gene"), (0, adata.obs_names, "cell")):
        if not names.is_unique:
            dups = names[names.duplicated()].unique()[:5].tolist()
            raise IngestError(source, f"{names.duplicated().sum()} duplicate {what} names (e.g. {dups}); "
                                      f"make them unique (e.g. adata.{'var' if axis else 'obs'}_names_make_unique())",
                              field="var_names" if axis else "obs_names")


_SCHEMES = (("Ensembl (human)", re.compile(r"^ENSG\d{11}(\.\d+)?$", re.IGNORECASE)),
            ("Ensembl (non-human)", re.compile(r"^ENS[A-Z]{1,6}G\d{11}(\.\d+)?$", re.IGNORECASE)),
            ("Entrez", re.compile(r"^\d+$")),
            ("RefSeq", re.compile(r"^[NX][MR]_\d+(\.\d+)?$", re.IGNORECASE)),
            ("probe ids", re.compile(r"^\d+(_[a-z]+)?_at$", re.IGNORECASE)))


def gene_id_scheme(names) -> str:
    """The id scheme most gene names follow: Ensembl (human / non-human), Entrez, RefSeq, probe ids or symbols."""
    names = [str(n) for n in list(names)[:2000]]
    counts = {label: sum(bool(rx.match(n)) for n in names) for label, rx in _SCHEMES}
    label, hits = max(counts.items(), key=lambda kv: kv[1])
    return label if names and hits > 0.5 * len(names) else "symbols"


def check_gene_ids(adata, source: str, coverage: dict, min_fraction: float) -> str:
    """Refuse a file whose gene ids the gene vocabulary cannot read (an unknown id scheme, or
    non-human genes): fewer than `min_fraction` of them map. Returns the id scheme."""
    scheme = gene_id_scheme(adata.var_names)
    if coverage["fraction"] < min_fraction:
        raise IngestError(source, f"only {coverage['n_mapped']} of {coverage['n_genes']} gene ids "
                                  f"({coverage['fraction']:.0%}) map to the human gene vocabulary; the ids look like "
                                  f"{scheme} (e.g. {coverage['unmapped_examples'][:5]}): unknown gene-id scheme; give "
                                  "human gene symbols, Ensembl ENSG ids or Entrez ids", field="var_names")
    return scheme
