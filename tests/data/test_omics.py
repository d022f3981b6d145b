"""The shuffled-chunk loader over an ingested PBMC file: coverage, shuffling, sharding, outputs, labels."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig, omics_dataloader
from biomm.ingest.omics.anndata import ingest as ingest_omics
from biomm.store.cohort import Cohort


@pytest.fixture(scope="module")
def h5ad_path(tmp_path_factory):
    import scanpy as sc

    d = tmp_path_factory.mktemp("loader")
    sc.datasets.pbmc68k_reduced().write_h5ad(d / "pbmc.h5ad")
    ingest_omics([d / "pbmc.h5ad"], d / "cohort", {"qc": {"min_genes": 50}, "n_top_genes": 200}, progress=False)
    with Cohort(d / "cohort") as c:
        return c.path(c.records("omics")[0]["path"])


CFG = dict(batch_size=64, chunk_size=16, preload_chunks=4, label_keys=["bulk_labels"])


def _epoch(ds):
    return [b for b in ds]


def test_every_cell_once_per_epoch_with_outputs(h5ad_path):
    ds = CellChunkDataset(h5ad_path, OmicsLoaderConfig(**CFG))
    batches = _epoch(ds)
    ids = [i for b in batches for i in b["cell_ids"]]
    assert len(ids) == 700 == len(set(ids)) and len(batches) == len(ds)
    b = batches[0]
    assert b["genes"].dtype == torch.long and b["values"].dtype == torch.float32 and b["mask"].dtype == torch.bool
    assert b["genes"].shape == (64, 513) and torch.equal(b["mask"], b["genes"] != 0)
    assert b["x"].shape == (64, 200) and b["subject_ids"][0].startswith("cell:")
    a = ad.read_h5ad(h5ad_path)
    pos = a.obs_names.get_indexer(b["cell_ids"])
    codes = a.obs["bulk_labels"].cat.codes.to_numpy()[pos]
    np.testing.assert_array_equal(b["labels"]["bulk_labels"].numpy(), codes)
    hvg = np.flatnonzero(a.var["highly_variable"].to_numpy())
    np.testing.assert_allclose(b["x"].numpy(), a.X[pos][:, hvg].toarray(), rtol=1e-6)
    assert ds.label_categories["bulk_labels"] == list(a.obs["bulk_labels"].cat.categories)


def test_shuffles_differently_per_epoch_and_not_in_file_order(h5ad_path):
    ds = CellChunkDataset(h5ad_path, OmicsLoaderConfig(**CFG))
    e0 = [i for b in _epoch(ds) for i in b["cell_ids"]]
    ds.set_epoch(1)
    e1 = [i for b in _epoch(ds) for i in b["cell_ids"]]
    order = list(ad.read_h5ad(h5ad_path, backed="r").obs_names)
    assert e0 != e1 and e0 != order and sorted(e0) == sorted(e1)
    plain = CellChunkDataset(h5ad_path, OmicsLoaderConfig(**{**CFG, "shuffle": False}))
    assert [i for b in _epoch(plain) for i in b["cell_ids"]] == order


def test_ranks_get_disjoint_shards_and_subsets(h5ad_path):
    cfg = OmicsLoaderConfig(**CFG)
    shards = [{i for b in CellChunkDataset(h5ad_path, cfg, rank=r, world_size=2) for i in b["cell_ids"]} for r in (0, 1)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 700
    rows = np.arange(0, 700, 3)
    sub = [i for b in CellChunkDataset(h5ad_path, cfg, rows=rows) for i in b["cell_ids"]]
    order = ad.read_h5ad(h5ad_path, backed="r").obs_names
    assert sorted(sub) == sorted(order[rows])


def test_dataloader_with_workers_and_drop_last(h5ad_path):
    cfg = OmicsLoaderConfig(**{**CFG, "drop_last": True, "outputs": ["x"]})
    dl = omics_dataloader(h5ad_path, cfg, num_workers=2)
    batches = list(dl)
    assert all(b["x"].shape[0] == 64 for b in batches) and "genes" not in batches[0]
    assert len({i for b in batches for i in b["cell_ids"]}) == sum(len(b["cell_ids"]) for b in batches)


def test_missing_label_column_is_a_clear_error(h5ad_path):
    with pytest.raises(KeyError, match="no column"):
        CellChunkDataset(h5ad_path, OmicsLoaderConfig(label_keys=["nope"]))


def test_tokens_cover_every_expressed_hvg_and_are_trimmed(h5ad_path):
    a = ad.read_h5ad(h5ad_path)
    hvg = a.var["highly_variable"].to_numpy() & (a.var["vocab_id"].to_numpy() > 4)  # HVGs with a gene token
    cfg = OmicsLoaderConfig(**{**CFG, "shuffle": False, "tokens_hvg_only": True, "trim_tokens": True,
                               "tokens": {"top_k": 4096, "value_mode": "continuous"}})
    b = next(iter(CellChunkDataset(h5ad_path, cfg)))
    x = a.X[:64][:, hvg].toarray()
    n_expr = (x > 0).sum(1)
    assert torch.equal(b["mask"].sum(1) - 1, torch.from_numpy(n_expr))  # every expressed mapped HVG, plus <cls>
    assert b["genes"].shape[1] == n_expr.max() + 1  # trimmed to the longest cell, not to top_k
    hv_ids = set(a.var["vocab_id"].to_numpy()[hvg].tolist())
    assert set(b["genes"][b["mask"]][b["genes"][b["mask"]] > 4].tolist()) <= hv_ids
    # values are the cells' expression (continuous), matched gene by gene
    row0 = dict(zip(a.var["vocab_id"].to_numpy()[hvg].tolist(), x[0].tolist()))
    for g, v in zip(b["genes"][0, 1:][b["mask"][0, 1:]].tolist(), b["values"][0, 1:][b["mask"][0, 1:]].tolist()):
        assert abs(row0[g] - v) < 1e-5
