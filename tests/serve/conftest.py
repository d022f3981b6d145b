"""Serve fixtures: a tiny trained clinical model (with a fitted death_1y head), served copies of the
clinical cohort, one query engine shared by the read-only tests, and a uvicorn server on loopback."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.serve.helpers import FAST_DICOM, TASK, TOKENS


@pytest.fixture(scope="session")
def serve_model(clinical_cohort, tmp_path_factory) -> Path:
    """The tiny clinical model trained for 6 steps and exported, with the death_1y head fitted (as `biomm eval`
    does) and a QA head trained for 20 steps (as `biomm qa train` does)."""
    from biomm.model.bundle import load
    from biomm.config import load_config
    from biomm.heads.qa.train import train_qa
    from biomm.heads.qa.config import QAConfig
    from biomm.data.tasks import load_tasks
    from biomm.eval.clinical import QUICK, evaluate_clinical
    from biomm.model.export import export
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    tmp = tmp_path_factory.mktemp("serve_model")
    cfg = load_train_config("configs/train/clinical_tiny.yaml", ["trainer.max_steps=6", "trainer.val_every_n_steps=6",
                                                                "trainer.checkpoint_every_n_steps=6"])
    fit(cfg, clinical_cohort, tmp / "run", progress=False)
    export(tmp / "run", tmp / "model")
    evaluate_clinical(load(tmp / "model"), clinical_cohort, tmp / "eval", load_tasks(), names=[TASK], protocol=QUICK)
    train_qa(tmp / "model", clinical_cohort, load_config(QAConfig, "configs/qa/tiny.yaml", ["train.steps=20"]))
    return tmp / "model"


def copy_cohort(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def served_cohort(clinical_cohort, tmp_path_factory) -> Path:
    """A copy of the clinical cohort for the read-only tests (never ingested into)."""
    return copy_cohort(clinical_cohort, tmp_path_factory.mktemp("served") / "cohort")


@pytest.fixture(scope="session")
def engine(serve_model, served_cohort):
    from biomm.query.engine import QueryEngine

    return QueryEngine(serve_model, served_cohort)


@pytest.fixture(scope="session")
def app(serve_model, served_cohort, engine):
    from biomm.serve import create_app
    from biomm.serve.settings import ServeConfig

    return create_app(serve_model, served_cohort, TOKENS, ServeConfig(dicom_ingest=FAST_DICOM), engine=engine)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def subjects(served_cohort) -> list[str]:
    from biomm.store.cohort import Cohort

    with Cohort(served_cohort, create=False, read_only=True) as c:
        return c.subjects()


@pytest.fixture(scope="session")
def imaged_subject(served_cohort) -> str:
    from biomm.store.cohort import Cohort

    with Cohort(served_cohort, create=False, read_only=True) as c:
        return c.records("imaging")[0]["subject_id"]


@pytest.fixture(scope="session")
def live_server(app):
    """The session app under uvicorn on a free loopback port; yields its base URL."""
    import httpx
    import uvicorn

    from tests.serve.helpers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        raise RuntimeError("uvicorn did not start on loopback within 30 s")
    yield base
    server.should_exit = True
    thread.join(10)
