"""The training plan: a LightningModule around BiommModel and its objectives (steps, validation
recall, optimiser groups and the warm-up + cosine schedule)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch

from biomm.train.retrieval import pairwise_recall
from biomm.model.module import BiommModel
from biomm.objectives import WeightedObjectives
from biomm.train.config import TrainConfig
from biomm.types import Batch

LAST = "last.ckpt"


class NanLossError(RuntimeError):
    """A non-finite loss: the run stops and names the step, the batch's subjects and the last good checkpoint."""


class BiommLightning(L.LightningModule):
    """The training plan: one step = objectives.prepare -> model -> weighted objectives; validation = loss and cross-modal recall@k."""
    def __init__(self, model: BiommModel, objectives: WeightedObjectives, cfg: TrainConfig,
                 checkpoint_dir: Path | None = None):
        super().__init__()
        self.model, self.objectives, self.cfg = model, objectives, cfg
        self.checkpoint_dir = checkpoint_dir
        self._val: dict[str, list[torch.Tensor]] = {}
        self._val_present: dict[str, list[torch.Tensor]] = {}
        self._val_losses: list[float] = []
        self.final_metrics: dict[str, float] = {}
        self._t_step = time.perf_counter()

    def forward(self, batch: Batch):
        """Outputs of the model for `batch`."""
        return self.model(batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Move a Batch (every modality's tensors and presence masks) to `device`."""
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int):
        """One reseeded step: masks drawn from (seed, step), weighted objective loss; stops on a non-finite loss."""
        step = self.global_step
        torch.manual_seed(self.cfg.trainer.seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(self.cfg.trainer.seed * 7_919 + step)
        masked = self.objectives.prepare(batch, gen)
        out = self.model(masked)
        clean = self.model(batch) if self.objectives.needs_clean(masked) else None
        loss, metrics = self.objectives(out, masked, clean)
        # Objectives on per-modality embeddings leave the fusion stream out of the loss; a zero-weighted
        # path gives its parameters a (zero) gradient so DDP runs without find_unused_parameters.
        loss = loss + 0.0 * out.fused.float().sum()
        if not torch.isfinite(loss):
            last = self.checkpoint_dir / LAST if self.checkpoint_dir else None
            raise NanLossError(
                f"non-finite loss ({float(loss.detach())}) at step {step}; batch subjects: {', '.join(batch.subject_ids[:20])}"
                f"{' ...' if batch.size > 20 else ''}; last good checkpoint: "
                f"{last if last and last.exists() else 'none yet'}")
        now = time.perf_counter()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch.size, sync_dist=True)
        self.log("train/subjects_per_s", batch.size / max(now - self._t_step, 1e-9), prog_bar=True, batch_size=batch.size)
        self._t_step = now
        for k, v in metrics.items():
            if k != "loss":
                self.log(f"train/{k}", float(v), batch_size=batch.size)
        return loss

    def optimizer_step(self, *args, **kwargs):
        """The optimiser step, then the learnable temperature is clamped to [0, ln 100]."""
        super().optimizer_step(*args, **kwargs)
        self.objectives.clamp_()  # learnable temperature stays in [0, ln 100]

    # validation: loss and cross-modal retrieval recall@k over the whole split
    def on_validation_epoch_start(self) -> None:
        """Reset the validation accumulators."""
        self._val, self._val_present, self._val_losses = {}, {}, []

    def validation_step(self, batch: Batch, batch_idx: int):
        """Validation loss and each modality's pooled embeddings `[B, D]` for recall."""
        out = self.model(batch)
        loss, _ = self.objectives(out, batch)
        self._val_losses.append(float(loss))
        for m, emb in out.pooled.items():
            self._val.setdefault(m, []).append(emb.float().cpu())
            self._val_present.setdefault(m, []).append(out.present[m].cpu())

    def on_validation_epoch_end(self) -> None:
        """Log val/loss and pairwise recall@k over the whole split."""
        if not self._val_losses:
            return
        metrics = {"val/loss": sum(self._val_losses) / len(self._val_losses)}
        emb = {m: torch.cat(v) for m, v in self._val.items()}
        present = {m: torch.cat(v) for m, v in self._val_present.items()}
        metrics.update({f"val/{k}": v for k, v in pairwise_recall(emb, present, self.cfg.recall_k).items()})
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k == "val/loss")
        self.final_metrics = {k: float(v) for k, v in metrics.items()}

    def configure_optimizers(self):
        """AdamW parameter groups (per-adapter lr, no decay on biases, norms and embeddings) and the step schedule."""
        o = self.cfg.optim
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, p in [*self.model.named_parameters(), *(("objectives." + n, p) for n, p in self.objectives.named_parameters())]:
            if not p.requires_grad:
                continue
            lr = o.lr
            if name.startswith("adapters."):
                lr = o.adapter_lr.get(name.split(".")[1], o.lr)
            decay = o.weight_decay if p.dim() >= 2 and "embed" not in name else 0.0
            groups.setdefault((lr, decay), []).append(p)
        opt = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
                                lr=o.lr, betas=o.betas)
        total = self.cfg.trainer.max_steps

        def factor(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / max(1, o.warmup_steps)
            if o.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
