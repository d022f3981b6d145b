"""Shared fixtures: paths to the data the project ships, and fresh cohorts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT / "biomm" / "resources" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    return tmp_path / "cohort"
