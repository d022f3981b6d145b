"""`biomm bench omics-loader`: biomm's cell loader against anndata's AnnLoader and scDataset.

Out of core (the file stays on disk): biomm's shuffled chunks (`in_memory: never`) against AnnLoader on
`backed='r'` and scDataset (`BlockShuffling` with biomm's chunk size as its block size and biomm's
preload as its fetch factor) on the same backed file. In memory (the file fits): biomm with
`in_memory: auto` (the whole matrix read once at open) against AnnLoader on the AnnData read into memory.

Files of >= 200,000 cells are built by tiling the real pbmc68k cells (counts recovered from
`.raw`) with Poisson noise, cached under the temp folder. Each loader runs in its own
subprocess so that peak RSS is its own. Both produce shuffled dense minibatches [B, n_genes]."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from biomm.bench.common import peak_rss_mib


def cache_dir() -> Path:
    """Where the benchmark keeps its generated files (BIOMM_BENCH_CACHE, else the temp folder)."""
    d = Path(os.environ.get("BIOMM_BENCH_CACHE", Path(tempfile.gettempdir()) / "biomm-bench-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def bench_file(n_cells: int) -> Path:
    """A tiled PBMC .h5ad of `n_cells` cells, generated once and cached."""
    from biomm.ingest.demo.cells import tiled_pbmc

    path = cache_dir() / f"pbmc_tiled_{n_cells}.h5ad"
    if not path.exists():
        tiled_pbmc(n_cells, path)
    return path


def worker(loader: str, path: str, max_cells: int, max_seconds: float, batch_size: int) -> dict:
    """Iterate shuffled minibatches until max_cells or max_seconds; cells/s and peak RSS of this process."""
    import numpy as np
    import torch

    t_open = time.perf_counter()
    if loader in ("biomm", "biomm-memory"):
        from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig

        mode = "never" if loader == "biomm" else "auto"
        ds = CellChunkDataset(path, OmicsLoaderConfig(batch_size=batch_size, outputs=["x"], hvg_only=False, in_memory=mode))
        if loader == "biomm-memory" and ds.memory is None:
            raise RuntimeError(f"{path} does not fit the in-memory share; the in-memory run is not meaningful")
        it = iter(ds)
        get = lambda b: b["x"]  # noqa: E731
    elif loader == "scdataset":
        import anndata as ad
        from scdataset import BlockShuffling, scDataset

        adata = ad.read_h5ad(path, backed="r")
        cfg_chunk, cfg_preload = 64, 32  # OmicsLoaderConfig's chunk_size and preload_chunks

        def fetch(view):
            x = view.to_memory().X
            return x.toarray() if hasattr(x, "toarray") else np.asarray(x)

        it = iter(scDataset(adata, BlockShuffling(block_size=cfg_chunk), batch_size=batch_size, fetch_factor=cfg_preload,
                            fetch_transform=fetch, batch_transform=torch.from_numpy, seed=0))
        get = lambda b: b  # noqa: E731
    elif loader == "biomm-tokens":
        from biomm.data.omics import CellChunkDataset, OmicsLoaderConfig

        it = iter(CellChunkDataset(path, OmicsLoaderConfig(batch_size=batch_size, outputs=["tokens"])))
        get = lambda b: b["genes"]  # noqa: E731
    else:
        import anndata as ad
        from anndata.experimental import AnnLoader

        adata = ad.read_h5ad(path, backed="r" if loader == "annloader-backed" else None)
        it = iter(AnnLoader(adata, batch_size=batch_size, shuffle=True))
        get = lambda b: b.X  # noqa: E731
    open_s = time.perf_counter() - t_open
    n, checksum = 0, 0.0
    t0 = time.perf_counter()
    while n < max_cells and time.perf_counter() - t0 < max_seconds:
        x = get(next(it))
        assert isinstance(x, torch.Tensor)
        n += x.shape[0]
        checksum += float(x[:, :4].float().sum())
    dt = time.perf_counter() - t0
    rss = peak_rss_mib()
    return {"cells": n, "seconds": round(dt, 3), "cells_per_s": round(n / dt, 1), "open_seconds": round(open_s, 3),
            "peak_rss_mib": round(rss, 1), "checksum": round(checksum, 1) if np.isfinite(checksum) else None}


def _run(loader: str, path: Path, max_cells: int, max_seconds: float, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "biomm.bench.omics_loader", loader, str(path), str(max_cells), str(max_seconds),
           str(batch_size)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_bench(n_cells: int = 200_000, scale: int = 4, max_cells: int = 60_000, max_seconds: float = 20.0,
              batch_size: int = 256) -> dict:
    """The omics loader benchmark: cells/s and peak RSS of biomm's chunk loader against AnnLoader, as one dict."""
    t0 = time.perf_counter()
    small, big = bench_file(n_cells), bench_file(n_cells * scale)
    gen_s = time.perf_counter() - t0
    r = {
        "biomm_1x": _run("biomm", small, max_cells, max_seconds, batch_size),
        "biomm_memory_1x": _run("biomm-memory", small, max_cells, max_seconds, batch_size),
        "scdataset_backed_1x": _run("scdataset", small, max_cells, max_seconds, batch_size),
        "biomm_4x": _run("biomm", big, max_cells, max_seconds, batch_size),
        "biomm_tokens_1x": _run("biomm-tokens", small, max_cells, max_seconds, batch_size),
        "annloader_backed_1x": _run("annloader-backed", small, max_cells // 4, max_seconds, batch_size),
        "annloader_memory_1x": _run("annloader-memory", small, max_cells, max_seconds, batch_size),
        "annloader_memory_4x": _run("annloader-memory", big, max_cells, max_seconds, batch_size),
    }
    rate = lambda k: r[k].get("cells_per_s", float("nan"))  # noqa: E731
    rss = lambda k: r[k].get("peak_rss_mib", float("nan"))  # noqa: E731
    ratio_backed = rate("biomm_1x") / rate("annloader_backed_1x")
    ratio_mem = rate("biomm_1x") / rate("annloader_memory_1x")
    ratio_scd = rate("biomm_1x") / rate("scdataset_backed_1x")
    ratio_mem_vs_mem = rate("biomm_memory_1x") / rate("annloader_memory_1x")
    rss_growth = rss("biomm_4x") / rss("biomm_1x")
    return {
        "benchmark": "omics-loader",
        "data": f"real pbmc68k_reduced cells (counts recovered from .raw, 765 genes) tiled to {n_cells:,} and "
                f"{n_cells * scale:,} cells with Poisson noise on the counts; cached in {cache_dir()}",
        "task": f"shuffled dense minibatches of {batch_size} cells x all genes as torch tensors; "
                "each loader in its own subprocess, single process (num_workers=0)",
        "peer": "anndata.experimental.AnnLoader (shuffle=True): backed='r' (out-of-core, the like-for-like peer) "
                "and in memory (whole file loaded)",
        "throughput_ratio_vs_annloader_backed": round(ratio_backed, 2),
        "throughput_ratio_vs_annloader_in_memory": round(ratio_mem, 2),
        "ratio_vs_annloader_backed": round(ratio_backed, 2),
        "ratio_vs_scdataset": round(ratio_scd, 2),
        "ratio_vs_annloader_in_memory": round(ratio_mem_vs_mem, 2),
        "ratio_vs_annloader_in_memory_note": "biomm in_memory auto vs AnnLoader on the in-memory AnnData; both read "
                                             "the file at open (open_seconds in runs), timed from the first batch",
        "targets": {"ratio_vs_annloader_backed": 10, "ratio_vs_scdataset": 1, "ratio_vs_annloader_in_memory": 1},
        "target_throughput_ratio": 2.0,
        "meets_throughput_target": bool(ratio_backed >= 2.0),
        "biomm_peak_rss_ratio_4x_over_1x": round(rss_growth, 3),
        "annloader_in_memory_peak_rss_ratio_4x_over_1x": round(rss("annloader_memory_4x") / rss("annloader_memory_1x"), 3),
        "biomm_rss_flat": bool(rss_growth < 1.15),
        "runs": r,
        "file_generation_seconds": round(gen_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    loader, path, max_cells, max_seconds, bs = sys.argv[1:6]
    print(json.dumps(worker(loader, path, int(max_cells), float(max_seconds), int(bs))))
