"""Samples: what a batch is made of (a subject, an optional prediction time, optional labels)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset


@dataclass
class Sample:
    """One subject as of `prediction_time` (days since epoch, shifted time; None = the whole record)."""

    subject_id: str
    prediction_time: float | None = None
    labels: dict[str, float] = field(default_factory=dict)


class SampleDataset(Dataset):
    """A list of samples as a map-style dataset (the collator makes the batch)."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]
