"""Shared fixtures: paths to the data the project ships, and fresh cohorts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT / "biomm" / "resources" / "data"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny models, which run fastest on one thread (and do not fight each other for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    return tmp_path / "cohort"


def _thoracic_first(n_others: int) -> list[Path]:
    """The shipped bundles with a thoracic X-ray study, plus `n_others` more (sorted names)."""
    import gzip

    files = sorted((DATA / "synthea").glob("*.json.gz"))
    thoracic, others = [], []
    for f in files:
        text = gzip.decompress(f.read_bytes())
        (thoracic if b'"Thoracic structure' in text or b'"thoracic' in text.lower() else others).append(f)
    return thoracic + others[:n_others]


@pytest.fixture(scope="session")
def clinical_cohort(tmp_path_factory) -> Path:
    """A small real clinical cohort built the way the demo builds it: Synthea FHIR (the 23 patients
    with thoracic imaging studies + 37 others), linked PneumoniaMNIST chest X-rays through DICOM
    ingest. Session-scoped: build once, never write to it in a test (copy it first)."""
    import json

    from biomm.ingest.demo.xrays import make_linked_xrays
    from biomm.ingest.ehr.config import FhirIngestConfig
    from biomm.ingest.ehr.fhir import ingest as ingest_fhir
    from biomm.ingest.imaging.dicom import ingest as ingest_dicom

    root = tmp_path_factory.mktemp("clinical")
    cohort = root / "cohort"
    src = root / "synthea"
    src.mkdir()
    for f in _thoracic_first(37):
        (src / f.name).symlink_to(f)
    ingest_fhir([src], cohort, FhirIngestConfig(deid={"key": "test-key"}))
    make_linked_xrays(src, DATA / "pneumoniamnist.npz", root / "xrays", seed=0)
    dicoms = sorted((root / "xrays").glob("*.dcm"))
    ingest_dicom(dicoms, cohort, {"deid": {"key": "test-key"}, "preprocess": {"spatial_size_2d": [32, 32]}})
    (root / "built.json").write_text(json.dumps({"dicoms": len(dicoms)}))
    return cohort


@pytest.fixture(scope="session")
def cell_cohort(tmp_path_factory) -> Path:
    """Real PBMCs (scanpy's bundled pbmc68k_reduced, 700 cells, 10 types) ingested as a cell cohort."""
    import scanpy as sc

    from biomm.ingest.omics.anndata import ingest as ingest_omics

    root = tmp_path_factory.mktemp("cells")
    path = root / "pbmc68k_reduced.h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(path)
    ingest_omics([path], root / "cohort", {"label_keys": ["bulk_labels"]}, progress=False)
    return root / "cohort"
