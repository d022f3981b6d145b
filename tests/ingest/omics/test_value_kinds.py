"""Every value kind labs ship, built from real PBMCs: raw counts, log-normalised, CPM, TPM, FPKM.

Each is detected, named in the ingest summary and the manifest provenance, log1p-transformed where
it is not logged, and ingested without overflow; an all-zero gene and a one-gene cell pass; bad
input (NaN, inf, negative counts, duplicate genes, an unknown gene-id scheme) is quarantined with
the reason while the rest is ingested."""
from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from biomm.ingest.demo.cells import pbmc_counts
from biomm.ingest.omics import anndata as omics_anndata
from biomm.ingest.omics.read import source_checksum
from biomm.ingest.omics.validate import inspect_matrix
from biomm.store.cohort import Cohort

CFG = {"qc": {"min_genes": 0, "min_cells": 0}, "n_top_genes": 300}


@pytest.fixture(scope="module")
def kinds() -> dict[str, ad.AnnData]:
    counts = pbmc_counts()
    x = counts.X.toarray().astype(np.float64)
    lib = x.sum(1, keepdims=True)
    lengths = np.random.default_rng(0).integers(500, 10_000, counts.n_vars).astype(np.float64)  # fixed fake lengths
    rpk = x / lengths
    out = {"counts": counts, "log-normalized": sc.datasets.pbmc68k_reduced().raw.to_adata()}
    for name, m in (("CPM", x / lib * 1e6), ("TPM", rpk / rpk.sum(1, keepdims=True) * 1e6),
                    ("FPKM/RPKM", x / lengths * 1e9 / lib)):
        out[name] = ad.AnnData(sp.csr_matrix(m.astype(np.float32)), obs=counts.obs.copy(), var=counts.var.copy())
    return out


EXPECT = {"counts": ("counts", "raw counts"), "log-normalized": ("log-normalized", "log1p(normalised counts)"),
          "CPM": ("normalized", "CPM"), "TPM": ("length-normalized", "TPM"),
          "FPKM/RPKM": ("length-normalized", "FPKM/RPKM")}


def test_each_value_kind_is_detected(kinds):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflow in expm1 would raise here
        for name, a in kinds.items():
            rep = inspect_matrix(a.X, "f.h5ad")
            assert (rep.state, rep.kind) == EXPECT[name], name
    assert kinds["FPKM/RPKM"].X.max() > 1_000  # unlogged, large: the kind that used to overflow


def test_each_kind_ingests_logged_and_recorded(tmp_path, kinds):
    paths = {}
    for i, (name, a) in enumerate(kinds.items()):
        b = a.copy()
        if name != "log-normalized":
            x = b.X.toarray()
            x[:, 7] = 0  # an all-zero gene
            x[0, :] = 0
            x[0, 11] = 5.0  # a cell with a single expressed gene
            b.X = sp.csr_matrix(x)
        paths[name] = tmp_path / f"kind{i}.h5ad"
        b.write_h5ad(paths[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s = omics_anndata.ingest(list(paths.values()), tmp_path / "cohort", CFG, progress=False)
    assert s.quarantined == 0, s.quarantine
    for name, p in paths.items():
        assert s.details[str(p)]["value_kind"] == EXPECT[name][1]
        assert any(w.startswith(f"{p.name}: values are {EXPECT[name][1]}") for w in s.warnings)
    v3 = omics_anndata.ingest([paths["FPKM/RPKM"]], tmp_path / "cohort_v3", {**CFG, "hvg_flavor": "seurat_v3"},
                              progress=False)
    assert any("this input is length-normalized: switched to seurat" in step for step in v3.details[str(paths["FPKM/RPKM"])]["steps"])
    with Cohort(tmp_path / "cohort") as c:
        for rec in c.records("omics"):
            prov = json.loads(rec["provenance"])
            a = ad.read_h5ad(c.path(rec["path"]))
            x = a.X.toarray()
            assert np.isfinite(x).all() and 0 <= x.min() and x.max() < 20, prov["value_kind"]  # log scale
            assert a.var["highly_variable"].sum() > 0 and a.n_obs == 700
            assert prov["value_kind"] == a.uns["biomm"]["source_value_kind"]
            assert prov["gene_id_scheme"] == "symbols"
            if prov["state"] == "length-normalized":
                assert "normalize_total skipped (length-normalised input)" in prov["steps"]


def test_bad_values_and_gene_ids_are_quarantined(tmp_path, kinds):
    counts = kinds["counts"]
    bad = {}
    for name, value in (("NaN", np.nan), ("infinite", np.inf)):
        b = kinds["FPKM/RPKM"].copy()
        b.X = b.X.copy()
        b.X.data[5] = value
        bad[name] = b
    neg = counts.copy()
    neg.layers["counts"] = counts.X.copy()
    neg.layers["counts"].data[:4] = -1
    bad["negative counts are invalid"] = neg
    dup = counts.copy()
    dup.var_names = [dup.var_names[1]] + list(dup.var_names[1:])
    bad["duplicate gene names"] = dup
    odd = counts.copy()
    odd.var_names = [f"{1000 + i}_s_at" for i in range(odd.n_vars)]
    bad["unknown gene-id scheme"] = odd
    paths = {k: tmp_path / f"bad{i}.h5ad" for i, k in enumerate(bad)}
    for k, a in bad.items():
        a.write_h5ad(paths[k])
    good = tmp_path / "good.h5ad"
    counts.write_h5ad(good)
    s = omics_anndata.ingest([good, *paths.values()], tmp_path / "cohort", CFG, progress=False)
    assert s.items_written == 700 and s.quarantined == len(bad)
    reasons = {q.source: q.reason for q in s.quarantine}  # sources by checksum label (issue 18)
    reasons |= {str(p): reasons[f"sha256:{source_checksum(p)[:16]}.h5ad"] for p in paths.values()}
    for needle, p in paths.items():
        assert needle in reasons[str(p)], (needle, reasons[str(p)])
    assert "probe ids" in reasons[str(paths["unknown gene-id scheme"])]
