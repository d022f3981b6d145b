"""One Lightning callback that times training steps, shared by `fit` (the loader's share in metrics.json),
`biomm sweep` (steps/s per cell) and the benches (`bench train`, `bench scale`)."""
from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Per training step: `times` [steps] (seconds from batch start to batch end: the step's compute),
    `gaps` [steps - 1] (seconds from one step's end to the next one's start: waiting for the batch) and
    `sizes` [steps] (the batch's `size`, where it has one)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.gaps: list[float] = []
        self.sizes: list[int] = []
        self._start = 0.0
        self._end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        """Start the step's clock; record the wait since the last step ended."""
        self._start = time.perf_counter()
        if self._end is not None:
            self.gaps.append(self._start - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Record the step's time and batch size."""
        self._end = time.perf_counter()
        self.times.append(self._end - self._start)
        self.sizes.append(int(getattr(batch, "size", 0) or 0))

    @property
    def steps(self) -> int:
        """Steps timed so far."""
        return len(self.times)

    def steady(self, skip: int = 1) -> list[float]:
        """Step times without the first `skip` (warm-up; at least one step is kept when there is one)."""
        return self.times[min(skip, max(len(self.times) - 1, 0)):]
