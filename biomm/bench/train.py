"""`biomm bench train`: training throughput of the tiny clinical and cell presets, bf16 against fp32.

Both presets train on cohorts built here (cached under a temp dir): clinical = the demo's recipe
(the shipped Synthea bundles, the linked PneumoniaMNIST X-rays as DICOM at 32x32), cells =
scanpy's bundled pbmc68k_reduced. Every training runs in its own child process (so each peak RSS
is that run's own high-water mark) with the same steps and config except `trainer.precision`;
runs are interleaved (fp32, bf16, fp32, bf16, ...) so background load on a shared machine hits
both alike, and the best of the repeats is kept.

Throughput = subjects trained between the end of step `warmup` and the end of the last step,
over that time (warm-up steps pay one-off costs: allocator growth, oneDNN kernel selection).
Loader fraction = time waiting for the next batch / (waiting + step compute), at the preset's
default worker count, after the warm-up (the whole-run figure `fit` reports is kept beside it)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from biomm.bench.common import machine, peak_rss_mib, run_child
from biomm.resources import resource

ROOT = Path(__file__).resolve().parents[2]
DATA = resource("data")
CONFIGS = {"clinical": ROOT / "configs" / "train" / "clinical_tiny.yaml",
           "cell": ROOT / "configs" / "train" / "cell_tiny.yaml"}


def build_clinical_cohort(work: Path) -> Path:
    """The demo's clinical cohort: Synthea FHIR + linked chest X-rays (DICOM, 32x32)."""
    from biomm.ingest.demo.xrays import make_linked_xrays
    from biomm.ingest.ehr import fhir
    from biomm.ingest.imaging import dicom

    cohort = work / "clinical_cohort"
    done = work / "clinical.done"
    if done.exists():
        return cohort
    synthea = DATA / "synthea"
    xrays = work / "xrays"
    fhir.ingest([synthea], cohort, {"deid": {"key": "bench"}}, progress=False)
    make_linked_xrays(synthea, DATA / "pneumoniamnist.npz", xrays, seed=0)
    dicom.ingest(sorted(xrays.glob("*.dcm")), cohort,
                 {"deid": {"key": "bench"}, "preprocess": {"spatial_size_2d": [32, 32]}}, progress=False)
    done.touch()
    return cohort


def build_cell_cohort(work: Path) -> Path:
    """scanpy's pbmc68k_reduced (700 cells, 10 bulk labels) as a cell cohort."""
    import scanpy as sc

    from biomm.ingest.omics.anndata import ingest

    cohort = work / "cell_cohort"
    done = work / "cell.done"
    if done.exists():
        return cohort
    path = work / "pbmc68k_reduced.h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(path)
    ingest([path], cohort, {"label_keys": ["bulk_labels"]}, progress=False)
    done.touch()
    return cohort


def throughput(timer, warmup: int) -> dict:
    """Subjects/s and the data-wait share over the steps after `warmup`, from a `StepTimer`'s record."""
    if timer.steps <= warmup or warmup < 1:
        raise RuntimeError(f"run too short: {timer.steps} steps, warm-up {warmup}")
    data_s, compute_s = sum(timer.gaps[warmup - 1:]), sum(timer.times[warmup:])
    seconds, subjects, steps = data_s + compute_s, sum(timer.sizes[warmup:]), timer.steps - warmup
    return {"timed_steps": steps, "timed_subjects": subjects, "timed_seconds": seconds,
            "subjects_per_s": subjects / seconds, "loader_fraction": data_s / max(seconds, 1e-12),
            "data_s_per_step": data_s / steps, "compute_s_per_step": compute_s / steps}


def _loader_alone_s_per_step(cfg, cohort: str, out: Path, warmup: int) -> float:
    """Seconds per batch of the training loader iterated on its own (same config, steps and worker count):
    what of the between-steps wait is the loader, the rest being Lightning's own per-step work (logging)."""
    from biomm.train.run import prepare_run, train_loader

    dm, _ = prepare_run(cfg, cohort, out)
    it = iter(train_loader(dm, cfg, 0))
    for _ in range(warmup):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in it:
        n += 1
    return (time.perf_counter() - t0) / max(n, 1)


def child_main(preset: str, precision: str, cohort: str, steps: str, warmup: str, threads: str) -> None:
    """Child process: one training run; prints its throughput, loader fraction and peak RSS."""
    import torch

    from biomm.train.config import load_train_config
    from biomm.train.run import fit
    from biomm.train.timing import StepTimer

    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    n = int(steps)
    cfg = load_train_config(CONFIGS[preset], [f"trainer.max_steps={n}", f"trainer.precision={precision}",
                                              f"trainer.val_every_n_steps={n}", f"trainer.checkpoint_every_n_steps={n}"])
    cb = StepTimer()
    with tempfile.TemporaryDirectory(prefix="biomm-bench-train-run-") as out:
        metrics = fit(cfg, cohort, Path(out) / "run", progress=False, extra_callbacks=[cb])
        loader_alone = _loader_alone_s_per_step(cfg, cohort, Path(out) / "loader", int(warmup))
    print(json.dumps({**throughput(cb, int(warmup)), "loader_alone_s_per_step": loader_alone, "steps": metrics["steps"], "fit_loader_fraction": metrics["loader_fraction"],
                      "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                      "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib()}))


def run(steps: int = 30, warmup: int = 5, repeats: int = 2, threads: int = 1, work: Path | None = None) -> dict:
    """Build both cohorts, train each preset at fp32 and bf16 in interleaved child runs, and return the report dict."""
    work = Path(work or Path(tempfile.gettempdir()) / "biomm-bench-train")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohorts = {"clinical": build_clinical_cohort(work), "cell": build_cell_cohort(work)}
    build_s = time.perf_counter() - t0
    runs: dict[tuple[str, str], list[dict]] = {}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for preset, cohort in cohorts.items():
            for precision in ("fp32", "bf16"):
                r = run_child("biomm.bench.train", preset, precision, str(cohort), str(steps), str(warmup), str(threads))
                runs.setdefault((preset, precision), []).append(r)
    train_s = time.perf_counter() - t0

    presets = {}
    for preset in cohorts:
        best = {p: max(runs[(preset, p)], key=lambda r: r["subjects_per_s"]) for p in ("fp32", "bf16")}
        presets[preset] = {
            "batch_size": best["fp32"]["batch_size"],
            "fp32_subjects_per_s": round(best["fp32"]["subjects_per_s"], 1),
            "bf16_subjects_per_s": round(best["bf16"]["subjects_per_s"], 1),
            "bf16_over_fp32_throughput": round(best["bf16"]["subjects_per_s"] / best["fp32"]["subjects_per_s"], 2),
            "all_subjects_per_s": {p: [round(r["subjects_per_s"], 1) for r in runs[(preset, p)]] for p in ("fp32", "bf16")},
            "default_num_workers": best["fp32"]["num_workers"],
            # the loader's own share: time in the train loader's next() over (that + step compute), whole run
            "loader_fraction": {p: best[p]["fit_loader_fraction"] for p in ("fp32", "bf16")},
            # the whole gap between steps (loader + Lightning's per-step logging, scheduler, checkpoint hooks)
            "between_steps_fraction": {p: round(best[p]["loader_fraction"], 4) for p in ("fp32", "bf16")},
            "data_ms_per_step": {p: round(1000 * best[p]["data_s_per_step"], 2) for p in ("fp32", "bf16")},
            "compute_ms_per_step": {p: round(1000 * best[p]["compute_s_per_step"], 2) for p in ("fp32", "bf16")},
            "loader_alone_ms_per_step": round(1000 * min(r["loader_alone_s_per_step"] for rs in
                                                         (runs[(preset, "fp32")], runs[(preset, "bf16")]) for r in rs), 2),
            "loader_under_target": all(best[p]["fit_loader_fraction"] < 0.10 for p in ("fp32", "bf16")),
            "peak_rss_mib": {p: max(r["peak_rss_mib"] for r in runs[(preset, p)]) for p in ("fp32", "bf16")},
        }
    return {
        "bench": "train",
        "presets": presets,
        "steps": steps,
        "warmup_steps_excluded": warmup,
        "repeats": repeats,
        "threads": threads or "torch default",
        "loader_target_fraction": 0.10,
        "cohorts": "clinical: shipped Synthea bundles + linked PneumoniaMNIST X-rays (DICOM, 32x32); "
                   "cell: scanpy pbmc68k_reduced (700 cells)",
        "method": "one child process per run (peak RSS = its ru_maxrss), runs interleaved fp32/bf16 per preset, best "
                  "of the repeats; subjects/s between the end of the warm-up steps and the last step; loader "
                  "fraction = wait for the next batch / (wait + training step) over the same steps (the wait includes "
                  "Lightning's between-step work: logging, LR scheduler); loader_alone = the same train loader "
                  "iterated on its own after the run, best over runs",
        "cohort_build_seconds": round(build_s, 1),
        "train_seconds": round(train_s, 1),
        "machine": {**machine(), "load_avg": [round(x, 2) for x in os.getloadavg()]},
    }


if __name__ == "__main__":
    child_main(*sys.argv[1:7])
