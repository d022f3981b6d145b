"""One training loop for every head that trains (question answering, perturbation response): a small
LightningModule that trains an `nn.Module` by a loss function, and `fit_head`, which runs it under a
`lightning.Trainer` on the CPU (seeded; no logger or checkpoints unless asked; precision as
`biomm.train.precision` resolves it).

    losses = fit_head(head, lambda m, b: mse(m(*b["x"]), b["y"]), batches, lr=3e-3, seed=0)

`batches` is a sequence with one batch per step (`len(batches)` steps): the caller decides what a batch
is, so a step-indexed, seeded batch order stays the caller's and is the same under any trainer."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import RichProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset

from biomm.train.precision import resolve_precision

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""`loss_fn(module, batch) -> scalar loss tensor`."""

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class HeadPlan(L.LightningModule):
    """Trains `module` by `loss_fn(module, batch)` with AdamW over its trainable parameters; keeps every
    step's loss in `losses` and stops on a non-finite loss (naming the step and `hint`)."""

    def __init__(self, module: nn.Module, loss_fn: LossFn, lr: float, weight_decay: float = 0.0,
                 name: str = "head", hint: str = "lower the learning rate"):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn
        self.lr, self.weight_decay, self.name, self.hint = lr, weight_decay, name, hint
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One step's loss (a scalar); FloatingPointError when it is not finite."""
        loss = self.loss_fn(self.module, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name} loss is {float(loss.detach())} at step {len(self.losses)}; {self.hint}")
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the parameters that require a gradient."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


class _Steps(Dataset):
    """A sequence of prepared batches seen as a dataset: item i is step i's batch."""

    def __init__(self, batches: Sequence[Any]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return self.batches[i]


def _as_is(batch: Any) -> Any:
    return batch


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's start-up notes (accelerator, precision, loader workers) are noise for a head fitted
    inside a command: in-memory batches need no worker processes."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit_head(module: nn.Module, loss_fn: LossFn, batches: Sequence[Any], *, lr: float, weight_decay: float = 0.0,
             seed: int | None = 0, precision: str = "auto", width: int | None = None, gradient_clip_val: float | None = None,
             progress: bool = False, name: str = "head", hint: str = "lower the learning rate") -> list[float]:
    """Train `module` for `len(batches)` steps (one batch each, in order) on the CPU; returns the loss of every
    step. Random state is seeded from `seed` (None: the caller seeded it, e.g. just before building the module).
    `precision` ("auto" | "bf16" | "fp32") and the module's `width` resolve as for the backbone."""
    if not len(batches):
        raise ValueError(f"no batches to train the {name} on")
    if seed is not None:
        seed_everything(seed, verbose=False)
    plan = HeadPlan(module, loss_fn, lr, weight_decay, name, hint)
    lightning_precision, _ = resolve_precision(precision, "cpu", width)
    # a loader's own generator: iterating it draws no number from the global stream (dropout's)
    loader = DataLoader(_Steps(batches), batch_size=None, shuffle=False, collate_fn=_as_is,
                        generator=torch.Generator().manual_seed(0))
    module.train()  # Lightning keeps a module's mode as it finds it: an evaluation just before would disable dropout
    with quiet_lightning():
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), max_epochs=1,
                            precision=lightning_precision, gradient_clip_val=gradient_clip_val,
                            logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                            callbacks=[RichProgressBar(leave=False)] if progress else None)
        trainer.fit(plan, train_dataloaders=loader)
    module.eval()
    return plan.losses
