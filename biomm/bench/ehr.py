"""`biomm bench ehr`: the whole-history EHR encoder at a long context — peak RSS and time of one training
step (forward + backward) per context length, each in its own child process, against the same encoder at
the old context of 128 events measured in the same run.

Attention is `scaled_dot_product_attention` (flash / memory-efficient kernels), so memory grows linearly
with the context; the figure to read is `peak_rss_mib` at 8,192 events and batch 8 (target: < 4 GiB)."""
from __future__ import annotations

import json
import sys
import time

from biomm.bench.common import machine, peak_rss_mib, run_child


def child_main(preset: str, batch_size: str, length: str, causal: str, threads: str) -> None:
    """One step of the EHR adapter at `preset`, `batch_size` x `length` events; prints one JSON line."""
    import torch

    from biomm.adapters import build_adapter
    from biomm.adapters.ehr import EhrConfig

    torch.set_num_threads(int(threads))
    b, n = int(batch_size), int(length)
    torch.manual_seed(0)
    adapter = build_adapter("ehr", EhrConfig(vocab_size=4096, causal=causal == "1"), 256 if preset != "tiny" else 32, preset)
    g = torch.Generator().manual_seed(0)
    t = adapter.example_tensors(b, n, g)
    t["mask"][:] = True  # every row at the full context
    base = peak_rss_mib()
    start = time.perf_counter()
    out = adapter(t)
    out.x.float().pow(2).mean().backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"preset": preset, "batch_size": b, "events": n, "causal": causal == "1",
                      "step_s": round(seconds, 3), "peak_rss_mib": peak_rss_mib(), "rss_before_step_mib": base}))


def run(preset: str = "small", batch_size: int = 8, lengths: tuple[int, ...] = (128, 2048, 8192),
        threads: int = 2) -> dict:
    """Peak RSS and step time at each context length (bidirectional and causal), ratios against 128 events."""
    rows = []
    for causal in ("0", "1"):
        for n in lengths:
            rows.append(run_child("biomm.bench.ehr", preset, str(batch_size), str(n), causal, str(threads)))
    ref = {r["causal"]: r for r in rows if r["events"] == min(lengths)}
    for r in rows:
        r["rss_over_shortest"] = round(r["peak_rss_mib"] / ref[r["causal"]]["peak_rss_mib"], 2)
    longest = [r for r in rows if r["events"] == max(lengths)]
    return {"bench": "ehr", "preset": preset, "batch_size": batch_size, "runs": rows,
            "peak_rss_gib_at_longest": max(round(r["peak_rss_mib"] / 1024, 2) for r in longest),
            "fits_4_gib": all(r["peak_rss_mib"] < 4096 for r in longest), "machine": machine()}


if __name__ == "__main__":
    child_main(*sys.argv[1:6])
