"""The benches' peers on tiny real inputs: fhiry on shipped Synthea bundles, SimpleITK on pydicom's CT series
(same output as biomm), scDataset and biomm's in-memory loader on real PBMCs; and the in-memory loader
delivers every cell once per epoch, split across ranks, like the chunked one."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def test_fhiry_peer_reads_the_same_bundles(tmp_path, data_dir):
    pytest.importorskip("fhiry")
    from biomm.bench.ingest_fhir import biomm_ingest, peer_fhiry, uncompressed_copies

    files = sorted((data_dir / "synthea").glob("*.json.gz"))[:2]
    folder = uncompressed_copies(files, tmp_path / "json")
    seconds, rows = peer_fhiry(folder)
    assert seconds > 0 and rows > 100
    assert biomm_ingest(sorted(folder.glob("*.json")), tmp_path / "cohort") > 0


def test_sitk_peer_matches_biomm_on_a_ct_series(tmp_path):
    import pydicom.data

    from biomm.bench.ingest_dicom import read_biomm, run_biomm, run_sitk
    from biomm.ingest.imaging.config import DicomIngestConfig

    src = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    series = [tmp_path / "ct"]
    shutil.copytree(src, series[0])
    cfg = DicomIngestConfig.model_validate({"workers": 1, "preprocess": {"spatial_size_3d": [16, 16, 4]}})
    (tmp_path / "sitk").mkdir()
    peer = run_sitk(series, cfg, tmp_path / "sitk")
    run_biomm(series, cfg, tmp_path / "cohort")
    ours = read_biomm(series, tmp_path / "cohort")
    assert peer["ct"].shape == ours["ct"].shape
    assert np.max(np.abs(peer["ct"].astype(np.float32) - ours["ct"].astype(np.float32))) <= 2e-3


def test_dicom_bench_copies_are_new_series(tmp_path):
    import pydicom

    from biomm.bench.ingest_dicom import prepare

    series = prepare(tmp_path, copies=2)
    assert len(series) == 26
    uids = {pydicom.dcmread(next(s.iterdir()), stop_before_pixels=True).SeriesInstanceUID for s in series}
    assert len(uids) == 26
    copy, orig = tmp_path / "s07_copy1", tmp_path / "s07"
    a, b = pydicom.dcmread(next(copy.iterdir())), pydicom.dcmread(next(orig.iterdir()))
    assert a.PixelData == b.PixelData and a.SOPInstanceUID != b.SOPInstanceUID


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory) -> Path:
    import scanpy as sc
    import scipy.sparse as sp

    adata = sc.datasets.pbmc68k_reduced()
    adata.X = sp.csr_matrix(np.clip(adata.raw.X.toarray() if adata.raw is not None else adata.X, 0, None).astype(np.float32))
    adata.raw = None
    path = tmp_path_factory.mktemp("pbmc") / "pbmc.h5ad"
    adata.write_h5ad(path)
    return path


def test_scdataset_and_memory_workers_deliver_batches(pbmc_file):
    pytest.importorskip("scdataset")
    from biomm.bench.omics_loader import worker

    for loader in ("scdataset", "biomm-memory", "biomm"):
        r = worker(loader, str(pbmc_file), 512, 10.0, 64)
        assert r["cells"] >= 512 and r["cells_per_s"] > 0, loader


@pytest.mark.parametrize("mode", ["always", "never"])
def test_every_cell_once_per_epoch_in_memory_and_from_disk(pbmc_file, mode):
    from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig

    cfg = OmicsLoaderConfig(batch_size=64, outputs=["x"], hvg_only=False, in_memory=mode, chunk_size=16)
    ds = CellChunkDataset(pbmc_file, cfg)
    assert (ds.memory is not None) == (mode == "always")
    ids = [i for b in ds for i in b["cell_ids"]]
    assert len(ids) == 700 == len(set(ids))
    ranks = [[i for b in CellChunkDataset(pbmc_file, cfg, rank=r, world_size=2) for i in b["cell_ids"]] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 700
    ds.set_epoch(1)
    assert [i for b in ds for i in b["cell_ids"]] != ids  # a new shuffle each epoch


def test_memory_batches_hold_the_same_values_as_disk_batches(pbmc_file):
    import anndata as ad

    from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig

    x = ad.read_h5ad(pbmc_file).X.toarray()
    names = list(ad.read_h5ad(pbmc_file, backed="r").obs_names)
    row = {n: i for i, n in enumerate(names)}
    for mode in ("always", "never"):
        cfg = OmicsLoaderConfig(batch_size=100, outputs=["x"], hvg_only=False, in_memory=mode)
        b = next(iter(CellChunkDataset(pbmc_file, cfg)))
        assert np.allclose(b["x"].numpy(), x[[row[c] for c in b["cell_ids"]]])
    auto = CellChunkDataset(pbmc_file, OmicsLoaderConfig(in_memory="auto"))
    assert auto.memory is not None  # 700 cells fit
