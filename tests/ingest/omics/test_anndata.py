"""Omics ingest on real PBMCs: state detection, recipes, formats, quarantine, idempotency, write-back."""
from __future__ import annotations

from biomm.ingest.omics.read import source_checksum

import gzip

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.io
import scipy.sparse as sp
from typer.testing import CliRunner

from biomm.vocab.genes import GeneVocab
from biomm.ingest.omics import anndata as omics_anndata
from biomm.ingest.omics.summary import summary as omics_summary
from biomm.ingest.omics.writeback import write_back
from biomm.ingest.demo.cells import pbmc_counts
from biomm.store.cohort import Cohort

CFG = {"qc": {"min_genes": 50}, "n_top_genes": 300}


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return pbmc_counts()


@pytest.fixture(scope="module")
def files(tmp_path_factory, counts):
    d = tmp_path_factory.mktemp("omics")
    reduced = sc.datasets.pbmc68k_reduced()
    reduced.write_h5ad(d / "pbmc_reduced.h5ad")
    counts.write_h5ad(d / "pbmc_counts.h5ad")
    return d


def _ingest(sources, cohort_dir, cfg=CFG, label_keys=()):
    cfg = {**cfg, "label_keys": list(label_keys)} if label_keys else cfg
    return omics_anndata.ingest(sources, cohort_dir, cfg, progress=False)


def test_scaled_x_falls_back_to_raw_and_says_so(files, cohort_dir):
    s = _ingest([files / "pbmc_reduced.h5ad"], cohort_dir, label_keys=["bulk_labels"])
    assert s.exit_code == 0 and s.items_written == 700 and s.subjects_added == 700
    assert any("X is scaled" in w and "using .raw" in w and "log-normalised" in w for w in s.warnings)
    with Cohort(cohort_dir) as c:
        (rec,) = c.records("omics")
        a = ad.read_h5ad(c.path(rec["path"]))
        assert a.uns["biomm"]["source_state"] == "log-normalized"
        assert "counts" not in a.layers and a.X.min() >= 0
        assert c.con.execute("SELECT count(*) FROM labels WHERE name='bulk_labels'").fetchall()[0][0] == 700
        assert c.con.execute("SELECT count(DISTINCT split) FROM splits").fetchall()[0][0] == 3
        assert len(c.subjects("cell")) == 700
        info = omics_summary(c)
    assert info["cells"] == 700 and info["by_file"][0]["vocab_fraction"] > 0.95


def test_counts_get_full_recipe_and_rerun_is_idempotent(files, cohort_dir):
    s = _ingest([files / "pbmc_counts.h5ad"], cohort_dir)
    assert any("raw counts" in w for w in s.warnings)
    with Cohort(cohort_dir) as c:
        a = ad.read_h5ad(c.path(c.records("omics")[0]["path"]))
    assert a.uns["biomm"]["source_state"] == "counts"
    np.testing.assert_allclose(a.layers["counts"].sum(1).A1, a.obs["total_counts"].to_numpy(), rtol=1e-5)
    # X is log1p(normalize_total(counts, 1e4))
    np.testing.assert_allclose(np.expm1(a.X[:5].toarray()).sum(1), 1e4, rtol=1e-3)
    assert a.var["highly_variable"].sum() == 300
    assert (a.var["vocab_id"] > GeneVocab.unk_id).mean() > 0.95
    again = _ingest([files / "pbmc_counts.h5ad"], cohort_dir)
    assert again.sources_skipped_unchanged == 1 and again.items_written == 0


def _bad_files(d, counts):
    out = {}
    good = counts.copy()
    trunc = d / "truncated.h5ad"
    good.write_h5ad(trunc)
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    out["truncated"] = trunc
    nan = counts.copy()
    nan.X = nan.X.toarray()
    nan.X[3, 5] = np.nan
    out["NaN"] = d / "nan.h5ad"
    nan.write_h5ad(out["NaN"])
    mism = d / "mismatch.h5ad"
    counts.write_h5ad(mism)
    with h5py.File(mism, "r+") as f:
        key = f["obs"].attrs["_index"]
        idx = f["obs"][key][:-1]
        del f["obs"][key]
        f["obs"].create_dataset(key, data=idx)
    out["mismatched obs"] = mism
    dup = counts.copy()
    dup.var_names = [dup.var_names[0]] + list(dup.var_names[:-1])
    out["duplicate gene"] = d / "dup.h5ad"
    dup.write_h5ad(out["duplicate gene"])
    neg = counts.copy()
    neg.X = neg.X.copy()
    neg.X.data[:10] = -3
    out["negative"] = d / "neg.h5ad"
    neg.write_h5ad(out["negative"])
    empty = ad.AnnData(sp.csr_matrix((5, counts.n_vars), dtype=np.float32), var=counts.var.copy())
    out["empty"] = d / "empty.h5ad"
    empty.write_h5ad(out["empty"])
    scaled = sc.datasets.pbmc68k_reduced()
    del scaled.raw
    out["no .raw"] = d / "scaled_noraw.h5ad"
    scaled.write_h5ad(out["no .raw"])
    return out


def test_bad_input_is_quarantined_with_reason_rest_ingested(tmp_path, files, counts, cohort_dir):
    bad = _bad_files(tmp_path, counts)
    s = _ingest([files / "pbmc_counts.h5ad", *bad.values()], cohort_dir)
    assert s.items_written == 700 and s.quarantined == len(bad) and s.exit_code == 3
    # sources are named by checksum label, never by file name (issue 18)
    reasons = {q.source: q.reason for q in s.quarantine}
    reasons |= {str(p): reasons[f"sha256:{source_checksum(p)[:16]}.h5ad"] for p in bad.values()}
    expect = {"truncated": "truncated", "NaN": "NaN", "mismatched obs": "obs has 699 rows but X has 700",
              "duplicate gene": "duplicate gene names", "negative": "negative counts are invalid",
              "empty": "is empty", "no .raw": "no .raw or counts layer"}
    for key, needle in expect.items():
        assert needle in reasons[str(bad[key])], (key, reasons[str(bad[key])])
    with Cohort(cohort_dir) as c:
        assert len(c.quarantined()) == len(bad)
    rerun = _ingest([files / "pbmc_counts.h5ad", *bad.values()], cohort_dir)
    assert rerun.sources_skipped_unchanged == len(bad) + 1 and rerun.quarantined == len(bad)  # still quarantined (issue 18)
    assert all(q.reason.startswith("still quarantined: ") for q in rerun.quarantine)


def test_low_vocabulary_coverage_warns(tmp_path, counts, cohort_dir):
    odd = counts.copy()
    odd.var_names = [f"gene{i}" if i % 3 else v for i, v in enumerate(odd.var_names)]
    odd.write_h5ad(tmp_path / "odd.h5ad")
    s = _ingest([tmp_path / "odd.h5ad"], cohort_dir)
    assert any("map to the gene vocabulary" in w for w in s.warnings)


def _write_10x_mtx(folder, a: ad.AnnData, ensembl: list[str]):
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(a.X.T).astype(np.int64))
    pd.DataFrame({"id": ensembl, "name": list(a.var_names), "t": "Gene Expression"}).to_csv(
        folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(list(a.obs_names)).to_csv(folder / "barcodes.tsv.gz", header=False, index=False)


def _write_10x_h5(path, a: ad.AnnData, ensembl: list[str]):
    m = sp.csc_matrix(a.X.T).astype(np.int32)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        g["data"], g["indices"], g["indptr"], g["shape"] = m.data, m.indices, m.indptr, np.array(m.shape)
        ft = g.create_group("features")
        ft["id"] = np.array(ensembl, dtype="S")
        ft["name"] = np.array(a.var_names, dtype="S")
        ft["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
        ft["genome"] = np.array(["GRCh38"] * a.n_vars, dtype="S")
        ft["_all_tag_keys"] = np.array([b"genome"])


def test_formats_10x_zarr_h5mu(tmp_path, counts, cohort_dir):
    import mudata

    vocab = GeneVocab.default()
    sub = counts[:, [vocab.info(g) is not None and vocab.info(g)["ensembl"] != "" for g in counts.var_names]].copy()
    ensembl = [vocab.info(g)["ensembl"].split("|")[0] for g in sub.var_names]
    _write_10x_mtx(tmp_path / "filtered_feature_bc_matrix", sub, ensembl)
    _write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", sub, ensembl)
    counts.write_zarr(tmp_path / "pbmc.zarr")
    prot = ad.AnnData(counts[:, ["CD3D", "FCGR3A", "MS4A1", "NKG7"]].X.copy(), obs=counts.obs[[]].copy(),
                      var=pd.DataFrame(index=["CD3", "CD16", "CD20", "NKG7"]))
    mudata.MuData({"rna": counts.copy(), "prot": prot}).write(tmp_path / "pbmc.h5mu")
    s = _ingest([tmp_path], cohort_dir)
    assert s.quarantined == 0, s.quarantine
    assert s.records_written == 4 and s.items_written == 4 * 700
    with Cohort(cohort_dir) as c:
        recs = {json_fmt(r): r for r in c.records("omics")}
        assert set(recs) == {"10x-mtx", "10x-h5", "zarr", "h5mu"}
        mu = ad.read_h5ad(c.path(recs["h5mu"]["path"]))
        assert mu.obsm["mod_prot"].shape == (700, 4) and list(mu.uns["biomm"]["modalities"]["prot"]) == ["CD3", "CD16", "CD20", "NKG7"]
        tenx = ad.read_h5ad(c.path(recs["10x-mtx"]["path"]))
        assert tenx.var_names[0].startswith("ENSG") and (tenx.var["vocab_id"] > 3).all()


def json_fmt(rec) -> str:
    import json

    return json.loads(rec["provenance"])["format"]


def test_chunked_path_matches_cells(files, cohort_dir):
    cfg = {**CFG, "max_in_memory_cells": 300, "chunk_cells": 250, "hvg_sample_cells": 400}
    s = _ingest([files / "pbmc_counts.h5ad"], cohort_dir, cfg)
    assert s.items_written == 700 and s.quarantined == 0
    with Cohort(cohort_dir) as c:
        a = ad.read_h5ad(c.path(c.records("omics")[0]["path"]))
    assert a.n_obs == 700 and a.var["highly_variable"].sum() == 300 and "counts" in a.layers
    assert a.uns["biomm"]["source_state"] == "counts" and a.obs["biomm_subject_id"].str.startswith("cell:").all()
    whole = cohort_dir.parent / "whole"  # the in-memory path: same per-cell values on the genes it keeps
    _ingest([files / "pbmc_counts.h5ad"], whole, CFG)
    with Cohort(whole) as c:
        b = ad.read_h5ad(c.path(c.records("omics")[0]["path"]))
    genes = b.var_names
    np.testing.assert_allclose(a[b.obs_names, genes].X.toarray(), b.X.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[b.obs_names, genes].layers["counts"].toarray(), b.layers["counts"].toarray())


def test_write_back_to_file_and_adata(files, cohort_dir):
    _ingest([files / "pbmc_counts.h5ad"], cohort_dir)
    with Cohort(cohort_dir) as c:
        path = c.path(c.records("omics")[0]["path"])
    a = ad.read_h5ad(path)
    emb = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
    ids = a.obs["biomm_subject_id"].to_numpy()[::-1]
    write_back(path, emb[::-1], obs_columns={"pred": np.arange(a.n_obs)[::-1]}, cell_ids=ids)
    b = ad.read_h5ad(path)
    np.testing.assert_array_equal(b.obsm["X_biomm"], emb)
    np.testing.assert_array_equal(b.obs["pred"].to_numpy(), np.arange(a.n_obs))
    assert b.X.nnz == a.X.nnz
    write_back(a, emb, key="X_other")
    assert a.obsm["X_other"].shape == (700, 8)
    with pytest.raises(ValueError, match="rows"):
        write_back(a, emb[:5])


def test_cli_exit_code_and_config_errors(tmp_path, files, counts, cohort_dir):
    from biomm.cli import app

    bad = tmp_path / "nan.h5ad"
    x = counts.copy()
    x.X = x.X.toarray()
    x.X[0, 0] = np.inf
    x.write_h5ad(bad)
    r = CliRunner().invoke(app, ["ingest", "omics", str(files / "pbmc_counts.h5ad"), str(bad), "--cohort",
                                 str(cohort_dir), "--set", "qc.min_genes=50", "--json"])
    assert r.exit_code == 3, r.output
    assert '"items_written": 700' in r.output and "infinite" in r.output
    r = CliRunner().invoke(app, ["ingest", "omics", str(bad), "--cohort", str(cohort_dir), "--set", "qc.nope=1"])
    assert r.exit_code == 2 and "unknown key 'qc.nope'" in r.output
