"""`biomm bench serve`: a bounded load test of `biomm serve` on loopback (concurrent clients issuing a mix
of task, question and similarity queries; latency percentiles per kind, throughput, errors), and the faiss
index lookup against an exact numpy scan at 100,000 indexed subjects, in the same run."""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from biomm.bench.common import machine
from biomm.resources import resource

DATA = resource("data")
TASK = "death_1y"
QUESTIONS = ["What was the most recent diagnosis?", "What was the last systolic blood pressure?",
             "Does the latest chest X-ray show pneumonia?"]


def build_demo(root: Path, n_patients: int = 60) -> tuple[Path, Path]:
    """The demo-sized clinical cohort (Synthea FHIR, the patients with chest imaging first, plus linked
    PneumoniaMNIST X-rays) and the tiny model trained on it, with the death_1y and QA heads fitted."""
    from biomm.model.bundle import load
    from biomm.config import load_config
    from biomm.data.tasks import load_tasks
    from biomm.eval.clinical import QUICK, evaluate_clinical
    from biomm.model.export import export
    from biomm.heads.qa.train import train_qa
    from biomm.heads.qa.config import QAConfig
    from biomm.ingest.demo.xrays import make_linked_xrays
    from biomm.ingest.ehr import fhir
    from biomm.ingest.imaging import dicom
    from biomm.train.run import fit
    from biomm.train.config import load_train_config

    files = sorted((DATA / "synthea").glob("*.json.gz"))
    chest = [f for f in files if b"thoracic" in gzip.decompress(f.read_bytes()).lower()]
    chosen = (chest + [f for f in files if f not in chest])[:n_patients]
    src, cohort = root / "synthea", root / "cohort"
    src.mkdir(parents=True)
    for f in chosen:
        (src / f.name).symlink_to(f)
    fhir.ingest([src], cohort, progress=False)
    make_linked_xrays(src, DATA / "pneumoniamnist.npz", root / "xrays", seed=0)
    dicom.ingest(sorted((root / "xrays").glob("*.dcm")), cohort, {"preprocess": {"spatial_size_2d": [32, 32]}},
                 progress=False)
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_train_config(configs / "train" / "clinical_tiny.yaml",
                            ["trainer.max_steps=20", "trainer.val_every_n_steps=20", "trainer.checkpoint_every_n_steps=20"])
    fit(cfg, cohort, root / "run", progress=False)
    model = export(root / "run", root / "model")
    evaluate_clinical(load(model), cohort, root / "eval", load_tasks(), names=[TASK], protocol=QUICK)
    train_qa(model, cohort, load_config(QAConfig, configs / "qa" / "tiny.yaml", ["train.steps=50"]))
    return Path(model), cohort


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, cohort: Path, token: str, port: int, threads: int) -> subprocess.Popen:
    """`biomm serve` of `model` on `cohort` in a child process on loopback, with one reader token."""
    env = {**os.environ, "BIOMM_TOKENS": f"{token}:reader", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "biomm", "serve", str(model), "--cohort", str(cohort),
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def serving(model: Path, cohort: Path, token: str, port: int, threads: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """`biomm serve` on loopback for the block: (base URL, process), ready to answer; stopped afterwards."""
    base = f"http://127.0.0.1:{port}"
    proc = start_server(Path(model), Path(cohort), token, port, threads)
    try:
        wait_ready(base, proc)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the server at `base` answers /health; RuntimeError if it exits or is not ready in time."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"biomm serve exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError(f"biomm serve was not ready within {timeout:.0f} s")


def _percentiles(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(max(ms), 1)}


async def load_test(base: str, token: str, subjects: list[str], clients: int, seconds: float, seed: int,
                    kinds: tuple[str, ...] = ("task", "ask", "similar")) -> dict[str, Any]:
    """`clients` concurrent clients, each issuing one query (of a kind drawn from `kinds`) at a time until
    `seconds` have passed: latency percentiles per kind, throughput, errors. The clients are aiohttp's:
    httpx's async pool queues concurrent requests in the client itself (measured here: p95 300 ms where the
    server answered in 60 ms), which a latency figure must not include."""
    import aiohttp

    lat: dict[str, list[float]] = {"task": [], "ask": [], "similar": []}
    errors: dict[str, int] = {}
    stop = time.monotonic() + seconds

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        rng = random.Random(seed + i)
        while time.monotonic() < stop:
            kind, subject = rng.choice(kinds), rng.choice(subjects)
            body = {"kind": kind, "subject": subject, **({"task": TASK} if kind == "task" else {}),
                    **({"question": rng.choice(QUESTIONS)} if kind == "ask" else {}), **({"k": 10} if kind == "similar" else {})}
            t0 = time.perf_counter()
            try:
                async with http.post("/query", json=body) as r:
                    await r.read()
                    ok = r.status == 200
                    key = f"{kind}:{r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                ok, key = False, f"{kind}:{exc.__class__.__name__}"
            if ok:
                lat[kind].append((time.perf_counter() - t0) * 1000)
            else:
                errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {token}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    total = sum(len(v) for v in lat.values())
    return {"clients": clients, "seconds": round(elapsed, 1), "requests_ok": total,
            "throughput_rps": round(total / elapsed, 1), "errors": sum(errors.values()), "errors_by_kind": errors,
            "latency": {k: _percentiles(v) for k, v in lat.items()}}


def index_vs_numpy(vectors: np.ndarray, n: int = 100_000, queries: int = 300, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """The engine's index (faiss; IVF at this size) against an exact numpy scan, one query at a time as the
    server asks them, over the real embeddings tiled to `n` rows with small noise."""
    from biomm.query.index import VectorIndex

    rng = np.random.default_rng(seed)
    reps = int(np.ceil(n / len(vectors)))
    base = np.tile(vectors.astype(np.float32), (reps, 1))[:n]
    data = base + rng.normal(0, 0.05 * float(vectors.std()), base.shape).astype(np.float32)
    ids = [f"S{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    fast = VectorIndex(data, ids, backend="auto")
    build_s = time.perf_counter() - t0
    exact = VectorIndex(data, ids, backend="exact")
    picks = rng.choice(n, queries, replace=False)
    timings, hits = {}, []
    results = {}
    for name, index in (("faiss", fast), ("numpy", exact)):
        t0 = time.perf_counter()
        results[name] = [index.search(index.vectors[i][None], k)[1][0] for i in picks]
        timings[name] = (time.perf_counter() - t0) / queries * 1000
    for a, b in zip(results["faiss"], results["numpy"]):
        hits.append(len(set(a.tolist()) & set(b.tolist())) / k)
    return {"indexed": n, "dim": int(data.shape[1]), "backend": fast.backend, "queries": queries, "k": k,
            "faiss_ms_per_query": round(timings["faiss"], 3), "numpy_ms_per_query": round(timings["numpy"], 3),
            "speedup_vs_numpy": round(timings["numpy"] / timings["faiss"], 1),
            f"recall_at_{k}_vs_exact": round(float(np.mean(hits)), 3), "faiss_build_s": round(build_s, 2)}


def run(model: Path | None, cohort: Path | None, seconds: float = 30, clients: int = 16, index_size: int = 100_000,
        server_threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """The whole benchmark (demo build unless a model and cohort are given, load test, index comparison) as one JSON-able dict."""
    if not 1 <= seconds <= 300 or not 1 <= clients <= 64:
        raise ValueError("bounded load only: 1 <= seconds <= 300 and 1 <= clients <= 64")
    with tempfile.TemporaryDirectory(prefix="biomm-bench-serve-") as tmp:
        t0 = time.perf_counter()
        if model is None or cohort is None:
            model, cohort = build_demo(Path(tmp) / "demo")
        build_s = time.perf_counter() - t0
        from biomm.store.cohort import Cohort

        with Cohort(cohort, create=False, read_only=True) as c:
            subjects = c.subjects()
        token, port = secrets.token_urlsafe(24), free_port()
        t0 = time.perf_counter()
        with serving(Path(model), Path(cohort), token, port, server_threads) as (base, _):
            startup_s = time.perf_counter() - t0
            asyncio.run(load_test(base, token, subjects[:5], 2, 2, seed))  # warm-up (first QA call loads the LM)
            load = asyncio.run(load_test(base, token, subjects, clients, seconds, seed))
        from biomm.query.engine import QueryEngine

        engine = QueryEngine(model, cohort)
        index = index_vs_numpy(engine.embeddings.fused, n=index_size, seed=seed)
    targets = {"zero_errors": load["errors"] == 0,
               "task_p95_under_200ms": load["latency"]["task"].get("p95_ms", 1e9) < 200,
               "similar_p95_under_200ms": load["latency"]["similar"].get("p95_ms", 1e9) < 200}
    return {"bench": "serve", "model": engine.model_name, "subjects": len(subjects), "server_threads": server_threads,
            "demo_build_s": round(build_s, 1), "server_startup_s": round(startup_s, 1), "load": load,
            "targets": targets, "index": index, "machine": machine()}
