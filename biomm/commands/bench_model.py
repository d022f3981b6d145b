"""`biomm bench model` (the measurement lives in biomm.bench.model)."""
from __future__ import annotations

import typer

from biomm.commands.apps import bench_app
from biomm.commands.common import dump_json


@bench_app.command("model")
def bench_model(
    batch_size: int = typer.Option(16, help="Subjects per step"),
    length: int = typer.Option(128, help="Tokens per sequence-like modality (EHR events, genes, residues, words)"),
    iters: int = typer.Option(5, help="Timed steps per precision (median)"),
    threads: int = typer.Option(1, help="Intra-op threads for the model steps and the peak matmul; "
                                        "0 = torch's default. One thread keeps a shared machine's load from "
                                        "distorting the figures (OpenMP threads that wait on busy cores)"),
) -> None:
    """Print one JSON object: bf16/fp32 throughput ratio, FLOP fraction of bf16 peak, contrastive memory."""
    from biomm.bench.model import run

    dump_json(run(batch_size=batch_size, length=length, iters=iters, threads=threads))
