"""`biomm bench scale`: how each cost grows with the work, on synthetic scale-ups of the shipped data.

The scale-ups are documented synthetic copies, not new data:
- patients: the 250 shipped Synthea bundles replicated `s` times with fresh resource ids (so fresh patients;
  under de-identification each copy gets its own per-patient date shift, which jitters its timeline) and the
  files in a seeded permuted order;
- images: the linked demo X-rays (PneumoniaMNIST written as DICOM) replicated with fresh UIDs;
- cells: pbmc68k_reduced's counts tiled with Poisson noise (`biomm.ingest.demo.cells.tiled_pbmc`).

At each size every step runs in a fresh child process (its peak RSS is its own): FHIR, DICOM and omics
ingest, the cell loader, training steps at a fixed batch, `biomm embed`, the index build, and similarity
query latency under 16 loopback clients. The result is one JSON object with, per cost, the fitted growth
exponent (slope of log time against log size), and a PNG of the curves. Then 1% more patients are added
to the largest cohort: the re-ingest reads only the new sources and the incremental embed only the new
subjects, timed against the full runs."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from biomm.bench.common import machine, peak_rss_mib
from biomm.resources import resource

SYNTHEA = resource("data", "synthea")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAIN_CONFIG = CONFIGS / "train" / "clinical_tiny.yaml"
# the fixed-batch training the bench times: the same preset, modalities and batch as tests/train/test_ddp.py
TRAIN_OVERRIDES = ["data.modalities=[ehr,text]", "data.batch_size=16", "model.objectives.masked.weight=0.0",
                   "trainer.precision=fp32", "trainer.accelerator=cpu"]
KEY = "bench-scale"
RSS_STEPS = ("fhir", "dicom", "omics", "loader")  # the ingests and the loader: peak RSS at most 1.5x from 1x to 64x


# ----------------------------------------------------------------------------------------- data
def make_patients(scale: int, out: Path, seed: int = 0, start: int = 0, count: int | None = None,
                  base_patients: int = 250) -> list[Path]:
    """`scale` copies of the first `base_patients` shipped bundles with fresh ids, written as gzip files in a
    seeded permuted order (copy k, file f -> `<rank>_c<k>_<f>`); `start`/`count` write only part of the copies
    (the 1% top-up)."""
    out.mkdir(parents=True, exist_ok=True)
    base = sorted(SYNTHEA.glob("*.json.gz"))[:base_patients]
    jobs = [(k, f) for k in range(scale) for f in base][start:None if count is None else start + count]
    order = list(range(len(jobs)))
    random.Random(seed).shuffle(order)
    files, todo = [], []
    for rank, (k, f) in zip(order, jobs):
        path = out / f"{rank:07d}_c{k}_{f.name.split('_')[-1]}"  # the copy's name carries no patient name
        if not path.exists():
            todo.append((f, k, path))
        files.append(path)
    workers = min(os.cpu_count() or 1, 8) if len(todo) >= 500 else 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_copy, todo, chunksize=64))
    else:
        for job in todo:
            _write_copy(job)
    return files


def _write_copy(job: tuple[Path, int, Path]) -> None:
    """Copy `k` of one shipped bundle, rekeyed, written atomically to `path` (gzip level 1)."""
    from biomm.bench.ingest_fhir import rekeyed_bundle

    source, k, path = job
    text = rekeyed_bundle(gzip.decompress(source.read_bytes()), k)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(text, 1))
    tmp.rename(path)


def make_images(scale: int, out: Path, xrays: Path) -> list[Path]:
    """`scale` copies of the linked demo X-rays with fresh study, series and instance UIDs and patient ids."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(scale):
        for f in sorted(xrays.glob("*.dcm")):
            path = out / f"c{k}_{f.name}"
            if not path.exists():
                ds = pydicom.dcmread(f)
                for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                    setattr(ds, tag, generate_uid(entropy_srcs=[str(k), str(getattr(ds, tag))]))
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.PatientID = f"{ds.PatientID}-c{k}"
                ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


# ----------------------------------------------------------------------------------------- child steps
def _step_fhir(src: str, cohort: str) -> dict:
    from biomm.ingest.ehr import fhir

    t0 = time.perf_counter()
    s = fhir.ingest([src], cohort, {"deid": {"key": KEY}}, progress=False)
    return {"seconds": time.perf_counter() - t0, "sources": s.sources_seen, "skipped": s.sources_skipped_unchanged,
            "subjects_added": s.subjects_added, "events": s.items_written}


def _step_dicom(src: str, cohort: str) -> dict:
    from biomm.ingest.imaging import dicom

    t0 = time.perf_counter()
    s = dicom.ingest([src], cohort, {"deid": {"key": KEY}, "preprocess": {"spatial_size_2d": [32, 32]}},
                     progress=False)
    return {"seconds": time.perf_counter() - t0, "series": s.records_written}


def _step_cells(n: str, h5ad: str) -> dict:
    from biomm.ingest.demo.cells import tiled_pbmc

    t0 = time.perf_counter()
    if not Path(h5ad).exists():
        tiled_pbmc(int(n), h5ad)
    return {"seconds": time.perf_counter() - t0}


def _step_omics(h5ad: str, cohort: str) -> dict:
    from biomm.ingest.omics import anndata

    t0 = time.perf_counter()
    s = anndata.ingest([h5ad], cohort, progress=False)
    return {"seconds": time.perf_counter() - t0, "cells": s.items_written}


def _step_loader(cohort: str, batches: str) -> dict:
    from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig
    from biomm.store.cohort import Cohort

    with Cohort(cohort, create=False, read_only=True) as c:
        path = Path(cohort) / c.records("omics")[0]["path"]
    # out of core on purpose: `in_memory: auto` would hold a file that fits, which is the fast path, not the
    # flat-memory one this step measures
    ds = CellChunkDataset(path, OmicsLoaderConfig(batch_size=256, chunk_size=256, preload_chunks=16, in_memory="never"))
    t0, cells = time.perf_counter(), 0
    for i, b in enumerate(ds):
        cells += len(b["cell_ids"])
        if i + 1 >= int(batches):
            break
    return {"seconds": time.perf_counter() - t0, "cells": cells}


def _step_train(cohort: str, out: str, steps: str) -> dict:
    from biomm.train.config import load_train_config
    from biomm.train.run import fit
    from biomm.train.timing import StepTimer

    timer = StepTimer()
    n = int(steps)
    cfg = load_train_config(TRAIN_CONFIG, TRAIN_OVERRIDES + [f"trainer.max_steps={n}", f"trainer.val_every_n_steps={n}",
                                                             f"trainer.checkpoint_every_n_steps={n}"])
    t0 = time.perf_counter()
    fit(cfg, cohort, out, progress=False, extra_callbacks=[timer])
    return {"seconds": time.perf_counter() - t0, "step_s": float(np.median(timer.steady(5))), "steps": timer.steps}


def _step_export(run: str, to: str) -> dict:
    from biomm.model.export import export

    export(run, to)
    return {"seconds": 0.0}


def _step_embed(model: str, cohort: str, full: str) -> dict:
    from biomm.query.embed import embed_cohort

    t0 = time.perf_counter()
    info = embed_cohort(model, cohort, incremental=full != "full")
    return {"seconds": time.perf_counter() - t0, "subjects": info["subjects"], "embedded": info["embedded"]}


def _step_index(model: str, cohort: str) -> dict:
    from biomm.model.bundle import Embeddings, load
    from biomm.query.embed import embeddings_path
    from biomm.query.index import build_indexes

    emb = Embeddings.load(embeddings_path(load(model), cohort))
    t0 = time.perf_counter()
    build_indexes(emb)
    return {"seconds": time.perf_counter() - t0, "subjects": len(emb.subject_ids)}


STEPS = {"fhir": _step_fhir, "dicom": _step_dicom, "cells": _step_cells, "omics": _step_omics,
         "loader": _step_loader, "train": _step_train, "export": _step_export, "embed": _step_embed,
         "index": _step_index}


def in_process(step: str, *args: str) -> dict:
    """Run one step in this process (faster; its peak RSS is not its own, so none is reported)."""
    return {**STEPS[step](*args), "peak_rss_mib": None}


def child(step: str, *args: str) -> dict:
    """Run one step in a fresh process (`python -m biomm.bench.scale STEP ARGS`): its result plus peak RSS."""
    proc = subprocess.run([sys.executable, "-m", "biomm.bench.scale", step, *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench scale step {step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- query latency
def query_latency(model: Path, cohort: Path, clients: int = 16, seconds: float = 10, seed: int = 0) -> dict:
    """Similarity queries (the kind whose cost grows with the cohort) from `clients` loopback clients."""
    from biomm.bench.serve import free_port, load_test, serving
    from biomm.store.cohort import Cohort

    with Cohort(cohort, create=False, read_only=True) as c:
        subjects = c.subjects()
    token = secrets.token_urlsafe(24)
    with serving(model, cohort, token, free_port(), threads=1) as (base, _):
        asyncio.run(load_test(base, token, subjects[:5], 2, 2, seed, kinds=("similar",)))  # warm-up
        out = asyncio.run(load_test(base, token, subjects, clients, seconds, seed, kinds=("similar",)))
    lat = out["latency"]["similar"]
    return {"seconds": lat.get("p50_ms", 0) / 1000, "p50_ms": lat.get("p50_ms"), "p95_ms": lat.get("p95_ms"),
            "requests": out["requests_ok"], "errors": out["errors"], "throughput_rps": out["throughput_rps"]}


# ----------------------------------------------------------------------------------------- fit, plot
def growth_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Slope of log(seconds) against log(size): 1 = linear, < 1 sublinear (fixed costs), > 1 superlinear."""
    pts = [(s, t) for s, t in zip(sizes, seconds) if s > 0 and t and t > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def plot(curves: dict[str, tuple[list[float], list[float], str]], path: Path) -> None:
    """Log-log curves of seconds against size, one line per cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (sizes, seconds, unit) in curves.items():
        if len(sizes) >= 2:
            ax.plot(sizes, seconds, marker="o", label=f"{name} (per {unit})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("size (patients, series or cells)")
    ax.set_ylabel("seconds")
    ax.set_title("biomm bench scale: cost against size (synthetic scale-ups)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- run
def run(scales: tuple[int, ...] = (1, 4, 16, 64), cells: tuple[int, ...] = (10_000, 100_000, 1_000_000),
        work: Path | None = None, out_png: Path | None = None, train_steps: int = 30, query_seconds: float = 10,
        clients: int = 16, seed: int = 0, base_patients: int = 250, isolate: bool = True) -> dict[str, Any]:
    """The whole scale bench; returns one JSON-able dict (and writes the PNG to `out_png`). `isolate=False` runs
    the steps in this process (a quick check: no per-step peak RSS)."""
    step = child if isolate else in_process
    if sorted(scales) != list(scales) or scales[0] < 1 or len(scales) < 2:
        raise ValueError("scales must be at least two increasing copy counts, e.g. 1,4,16,64")
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="biomm-bench-scale-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: dict[str, list[dict]] = {k: [] for k in ("fhir", "dicom", "omics", "loader", "train", "embed", "index", "query")}
    try:
        from biomm.ingest.demo.xrays import make_linked_xrays

        xrays = work / "xrays"
        if not (xrays / "linkage.csv").exists():
            make_linked_xrays(SYNTHEA, resource("data", "pneumoniamnist.npz"), xrays, seed=0)
        model = None
        for s in scales:
            src, cohort = work / f"patients_{s}x", work / f"cohort_{s}x"
            files = make_patients(s, src, seed, base_patients=base_patients)
            shutil.rmtree(cohort, ignore_errors=True)
            r = step("fhir", str(src), str(cohort))
            rows["fhir"].append({"scale": s, "patients": base_patients * s, "files": len(files), **r})
            images = make_images(s, work / f"images_{s}x", xrays)
            icohort = work / f"imaging_{s}x"
            shutil.rmtree(icohort, ignore_errors=True)
            rows["dicom"].append({"scale": s, "files": len(images), **step("dicom", str(work / f"images_{s}x"), str(icohort))})
            if model is None:  # the model: trained once on the 1x cohort, at the fixed batch
                rows["train"].append({"scale": s, **step("train", str(cohort), str(work / "run_fit"), str(train_steps))})
                step("export", str(work / "run_fit"), str(work / "model"))
                model = work / "model"
            else:
                shutil.rmtree(work / f"run_{s}x", ignore_errors=True)
                rows["train"].append({"scale": s, **step("train", str(cohort), str(work / f"run_{s}x"), str(train_steps))})
            rows["embed"].append({"scale": s, **step("embed", str(model), str(cohort), "full")})
            rows["index"].append({"scale": s, **step("index", str(model), str(cohort))})
            rows["query"].append({"scale": s, "subjects": base_patients * s,
                                  **query_latency(model, cohort, clients, query_seconds, seed)})
        for n in cells:
            h5ad, ccohort = work / f"cells_{n}.h5ad", work / f"cells_{n}"
            step("cells", str(n), str(h5ad))
            shutil.rmtree(ccohort, ignore_errors=True)
            rows["omics"].append({"cells": n, **step("omics", str(h5ad), str(ccohort))})
            rows["loader"].append({"cells": n, **step("loader", str(ccohort), "200")})
        incremental = _incremental(work, scales[-1], model, rows, seed, base_patients, step)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return _report(rows, incremental, scales, cells, out_png, time.perf_counter() - t_start, base_patients)


def _incremental(work: Path, top: int, model: Path, rows: dict, seed: int, base_patients: int, step=child) -> dict:
    """1% more patients on the largest cohort: re-ingest (only new sources) and incremental embed, against full runs."""
    n_new = max(1, round(0.01 * base_patients * top))
    src, cohort = work / f"patients_{top}x", work / f"cohort_{top}x"
    make_patients(top + 1, src, seed, start=base_patients * top, count=n_new, base_patients=base_patients)
    ingest = step("fhir", str(src), str(cohort))
    embed = step("embed", str(model), str(cohort), "incremental")
    full_ingest = rows["fhir"][-1]["seconds"]
    full_embed = rows["embed"][-1]["seconds"]
    return {"patients_added": n_new, "of": base_patients * top, "reingest": ingest, "reembed": embed,
            "reingest_over_full": round(ingest["seconds"] / full_ingest, 4),
            "reembed_over_full": round(embed["seconds"] / full_embed, 4)}


def _report(rows: dict, incremental: dict, scales, cells, out_png: Path | None, seconds: float,
            base_patients: int = 250) -> dict:
    """The JSON object: per-size rows, growth exponents, RSS ratios, targets."""
    pat = lambda k: ([base_patients * r["scale"] for r in rows[k]], [r["seconds"] for r in rows[k]])  # noqa: E731
    curves = {"fhir ingest": (*pat("fhir"), "run"), "embed": (*pat("embed"), "run"), "index build": (*pat("index"), "run"),
              "dicom ingest": ([r["files"] for r in rows["dicom"]], [r["seconds"] for r in rows["dicom"]], "run"),
              "omics ingest": ([r["cells"] for r in rows["omics"]], [r["seconds"] for r in rows["omics"]], "run"),
              "train step": ([base_patients * r["scale"] for r in rows["train"]], [r["step_s"] for r in rows["train"]], "step"),
              "query p50": ([r["subjects"] for r in rows["query"]], [r["p50_ms"] / 1000 for r in rows["query"]], "query")}
    exponents = {name: growth_exponent(sizes, secs) for name, (sizes, secs, _) in curves.items()}
    rss = lambda k: (rows[k][-1]["peak_rss_mib"] / rows[k][0]["peak_rss_mib"]  # noqa: E731
                     if len(rows[k]) >= 2 and rows[k][0]["peak_rss_mib"] else None)
    if out_png is not None:
        plot(curves, out_png)
    top_query = rows["query"][-1] if rows["query"] else {}
    result = {
        "bench": "scale",
        "data": "synthetic scale-ups: Synthea bundles x copies with fresh ids (permuted), X-rays x copies with fresh "
                "UIDs, pbmc68k_reduced counts tiled with Poisson noise",
        "scales": list(scales), "patients_per_copy": base_patients, "cells": list(cells),
        "growth_exponents": exponents,
        "peak_rss_ratio_largest_over_smallest": {k: round(v, 2) if v else v for k in RSS_STEPS for v in [rss(k)]},
        "query_p95_ms_at_largest": top_query.get("p95_ms"),
        "incremental": incremental,
        "rows": rows,
        "png": str(out_png) if out_png else None,
        "bench_seconds": round(seconds, 1),
        "machine": machine(),
    }
    result["targets"] = {
        "ingest_embed_index_exponent_at_most_1.1": all(
            (exponents[k] or 0) <= 1.1 for k in ("fhir ingest", "dicom ingest", "omics ingest", "embed", "index build")),
        "ingest_and_loader_rss_ratio_at_most_1.5": None if any(  # not measured in-process
            result["peak_rss_ratio_largest_over_smallest"][k] is None for k in RSS_STEPS) else all(
            result["peak_rss_ratio_largest_over_smallest"][k] <= 1.5 for k in RSS_STEPS),
        "query_p95_under_200ms": (top_query.get("p95_ms") or 1e9) < 200,
        "whole_bench_under_30_min": seconds < 1800,
    }
    return result


if __name__ == "__main__":
    out = STEPS[sys.argv[1]](*sys.argv[2:])
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))
