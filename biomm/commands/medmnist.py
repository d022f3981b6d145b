"""Pipeline steps of pipelines/pneumonia.yaml: PneumoniaMNIST images through DICOM ingest, with labels and splits."""
from __future__ import annotations

from biomm.commands.common import console
from biomm.pipeline import PipelineContext, step


@step("pneumoniamnist_dicoms")
def pneumoniamnist_dicoms_step(ctx: PipelineContext, out: str, npz: str = "biomm/resources/data/pneumoniamnist.npz",
                               per_split: int | None = None) -> dict:
    """Pipeline step: PneumoniaMNIST images as DICOM files (`with: {out: DIR, npz: ..., per_split: N}`)."""
    from biomm.ingest.demo.medmnist import write_pneumoniamnist_dicoms

    return write_pneumoniamnist_dicoms(ctx.path(npz), ctx.path(out), per_split)


@step("pneumoniamnist_labels")
def pneumoniamnist_labels_step(ctx: PipelineContext, cohort: str, labels: str) -> dict:
    """Pipeline step: the images' labels and the data set's own split into the cohort (`with: {cohort, labels}`)."""
    from biomm.ingest.demo.medmnist import apply_labels_and_splits

    counts = apply_labels_and_splits(ctx.path(cohort), ctx.path(labels))
    console.print(f"labels and the data set's own split: {counts}")
    return counts
