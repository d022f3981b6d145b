"""Step-indexed sampling: batch k of a run is a function of (seed, k), so a resumed run sees what an
uninterrupted one would; the timed loader measures the loader's share of a step."""
from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader, Sampler


class StepSampler(Sampler[list[int]]):
    """Batches for global steps `start .. total`: epoch e is a permutation seeded by (seed, e).

    Under DDP each of `world` ranks takes its slice of one global batch (`batch_size` per rank), so
    N processes see exactly what one process with an N-times larger batch would see."""

    def __init__(self, n: int, batch_size: int, total_batches: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1):
        self.n, self.total, self.seed, self.start = n, total_batches, seed, start_batch
        self.rank, self.world, self.local = rank, world, batch_size
        self.bs = batch_size * world
        self.per_epoch = max(1, math.ceil(n / self.bs))

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for k in range(self.start, self.total):
            epoch, pos = divmod(k, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            batch = perm[pos * self.bs:(pos + 1) * self.bs]
            yield batch[self.rank * self.local:(self.rank + 1) * self.local].tolist()


class TimedLoader(DataLoader):
    """A DataLoader that adds up how long each `next()` waits for a batch: the loader's share of a step,
    without the trainer's own per-step work (logging, schedulers, checkpoints). The first batch of
    each pass (opening files, starting workers, filling a shuffle buffer) is kept apart as `start_s`."""

    fetch_s = 0.0
    start_s = 0.0
    batches = 0

    def __iter__(self):
        it = super().__iter__()
        first = True
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            if first:
                self.start_s += time.perf_counter() - t0
                first = False
            else:
                self.fetch_s += time.perf_counter() - t0
                self.batches += 1
            yield batch


class StepCells(torch.utils.data.IterableDataset):
    """Cell batches for global steps `start .. total`, epoch after epoch of the chunked loader."""

    def __init__(self, batches, total_batches: int, start_batch: int):
        self.batches, self.total, self.start = batches, total_batches, start_batch

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        per_epoch = max(1, len(self.batches))
        k = (self.start // per_epoch) * per_epoch
        epoch = self.start // per_epoch
        while k < self.total:
            self.batches.set_epoch(epoch)
            for b in self.batches:
                if k >= self.total:
                    return
                if k >= self.start:
                    yield b
                k += 1
            epoch += 1
