"""The GPU smoke run behind `scripts/gpu_smoke.sh`: the small clinical and cell presets trained for a few
hundred steps in bf16-mixed on a CUDA GPU (cohorts built from the shipped data as `bench train` builds them),
printing samples/s, peak GPU memory and the loader's share of a step, and checking that the loss falls."""
from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from biomm.bench.train import CONFIGS, build_cell_cohort, build_clinical_cohort

PRESETS = {"clinical": CONFIGS["clinical"].with_name("clinical.yaml"), "cell": CONFIGS["cell"].with_name("cell.yaml")}


def _losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def train_preset(name: str, cohort: Path, out: Path, steps: int, config: Path | None = None,
                 accelerator: str = "gpu") -> dict[str, Any]:
    """Train one preset (default: the small one of `name`) in bf16-mixed on the GPU: samples/s after warm-up,
    peak GPU memory, loader share, and whether the loss fell. `accelerator="cpu"` checks the same path on a CPU."""
    import torch

    gpu = accelerator == "gpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    from lightning.pytorch.callbacks import Callback

    from biomm.train.config import load_train_config
    from biomm.train.run import fit

    class Throughput(Callback):
        def __init__(self) -> None:
            self.samples, self.t0 = 0, None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == min(10, steps // 2):
                sync()
                self.t0, self.samples = time.perf_counter(), 0
            elif self.t0 is not None:
                self.samples += batch.size

    meter = Throughput()
    every = max(1, steps // 20)
    cfg = load_train_config(config or PRESETS[name], [f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={steps}",
                                            f"trainer.checkpoint_every_n_steps={steps}", f"trainer.log_every_n_steps={every}",
                                            f"trainer.accelerator={accelerator}", "trainer.precision=bf16"])
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    metrics = fit(cfg, cohort, out, progress=False, extra_callbacks=[meter])
    sync()
    elapsed = time.perf_counter() - meter.t0 if meter.t0 else float("nan")
    losses = _losses(out)
    head, tail = losses[: max(1, len(losses) // 5)], losses[-max(1, len(losses) // 5):]
    first, last = sum(head) / len(head), sum(tail) / len(tail)
    return {"preset": name, "steps": metrics.get("steps"), "samples_per_s": round(meter.samples / elapsed, 1),
            "gpu_peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if gpu else None,
            "loader_fraction": metrics.get("loader_fraction"), "loss_first": round(first, 4),
            "loss_last": round(last, 4), "loss_falls": last < first}


def run(steps: int = 300, work: Path | None = None) -> dict[str, Any]:
    """Both presets; one JSON-able dict with `ok` true when every loss fell."""
    import torch

    root = Path(work or tempfile.mkdtemp(prefix="biomm-gpu-smoke-"))
    root.mkdir(parents=True, exist_ok=True)
    cohorts = {"clinical": build_clinical_cohort(root), "cell": build_cell_cohort(root)}
    results = [train_preset(name, cohorts[name], root / f"run_{name}_{int(time.time())}", steps) for name in PRESETS]
    return {"bench": "gpu_smoke", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "precision": "bf16-mixed", "presets": results, "ok": all(r["loss_falls"] for r in results)}


if __name__ == "__main__":
    out = run(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["ok"] else 1)
