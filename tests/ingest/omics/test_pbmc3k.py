"""The second real cell dataset: 10x PBMC 3k raw counts (from `desc`), QC as the tutorials, cell types
from marker-named Leiden clusters; ingested as raw counts."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from biomm.ingest.demo.cells import PBMC3K_MARKERS, pbmc3k_counts
from biomm.ingest.omics import anndata as omics_anndata
from biomm.store.cohort import Cohort


@pytest.fixture(scope="module")
def pbmc3k() -> ad.AnnData:
    return pbmc3k_counts()


def test_pbmc3k_counts_after_qc_with_marker_named_types(pbmc3k):
    a = pbmc3k
    assert a.n_obs == 2638 and 13_000 < a.n_vars < 14_500  # the tutorials' QC keeps 2,638 cells
    x = a.X
    assert x.min() >= 0 and np.array_equal(x.data, np.round(x.data))  # integer UMI counts
    types = a.obs["cell_type"].astype(str).to_numpy()
    assert set(types) <= set(PBMC3K_MARKERS) and len(set(types)) >= 7
    assert (types == "CD4 T").mean() > 0.3  # the largest population, as in every PBMC 3k annotation
    col = {g: i for i, g in enumerate(a.var_names)}
    frac = np.asarray(x.sum(1)).ravel()
    logged = np.log1p(x.multiply(1e4 / frac[:, None]).tocsr())

    def mean(gene, rows):
        return float(logged[rows][:, col[gene]].mean())

    for cell_type, gene in [("B", "MS4A1"), ("NK", "GNLY"), ("CD14 Monocyte", "LYZ"), ("Megakaryocyte", "PPBP")]:
        inside = types == cell_type
        assert mean(gene, inside) > 2 * mean(gene, ~inside), (cell_type, gene)


def test_pbmc3k_ingests_as_raw_counts_with_labels(pbmc3k, tmp_path):
    sub = pbmc3k[np.random.default_rng(0).choice(pbmc3k.n_obs, 400, replace=False)].copy()
    sub.write_h5ad(tmp_path / "pbmc3k.h5ad")
    s = omics_anndata.ingest([tmp_path / "pbmc3k.h5ad"], tmp_path / "cohort",
                             {"n_top_genes": 500, "label_keys": ["cell_type"]}, progress=False)
    assert s.exit_code == 0 and s.items_written == 400 and any("raw counts" in w for w in s.warnings)
    with Cohort(tmp_path / "cohort") as c:
        a = ad.read_h5ad(c.path(c.records("omics")[0]["path"]))
        assert c.con.execute("SELECT count(*) FROM labels WHERE name='cell_type'").fetchall()[0][0] == 400
    assert a.uns["biomm"]["source_state"] == "counts" and a.var["highly_variable"].sum() == 500
