"""Training on PyTorch Lightning: the LightningModule around BiommModel + objectives, and `fit`.

Determinism across interruptions: batch k of a run is a function of (seed, k) — the sampler
draws a seeded permutation per epoch and starts at the restored global step, and every step
reseeds torch from (seed, step) — so a run killed and resumed from its last checkpoint ends with
the same weights as one that was never interrupted (bitwise in fp32, within bf16 tolerance)."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Sampler

from biomm.config import ConfigError
from biomm.data.datamodule import ARTIFACTS, CellDataModule, SampleDataset, build_datamodule
from biomm.eval.retrieval import pairwise_recall
from biomm.model import BiommModel, build_model
from biomm.objectives import WeightedObjectives, build_objectives
from biomm.train_config import TrainConfig
from biomm.types import Batch

console = Console(stderr=True)
LAST = "last.ckpt"
# Seconds to sleep per step: lets the kill-and-resume test interrupt a tiny run mid-way.
_STEP_DELAY = float(os.environ.get("BIOMM_TEST_STEP_DELAY", "0") or 0)


class NanLossError(RuntimeError):
    """A non-finite loss: the run stops and names the step, the batch's subjects and the last good checkpoint."""


# ------------------------------------------------------------------------------ precision
def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BF16_MIN_WIDTH = 128  # measured: bf16 autocast is 2.4x fp32 at width 256 (bench model), 0.7x at width 32 (bench train)


def resolve_precision(choice: str, accelerator: str, width: int | None = None) -> tuple[str, str]:
    """(Lightning precision, reason). GPU: bf16-mixed. CPU: bf16 autocast where the processor supports it
    (AMX / AVX512-BF16) and the model is wide enough for it to pay; tiny models run faster in fp32."""
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if choice == "fp32":
        return "32-true", "fp32 as configured"
    if on_gpu:
        return "bf16-mixed", "GPU: bf16-mixed"
    if choice == "bf16":
        return "bf16-mixed", "bf16 as configured"
    if not cpu_supports_bf16():
        return "32-true", "CPU without bf16 support: fp32"
    if width is not None and width < BF16_MIN_WIDTH:
        return "32-true", f"CPU supports bf16, but at width {width} its casts cost more than they save: fp32"
    return "bf16-mixed", "CPU supports bf16: bf16 autocast"


# ------------------------------------------------------------------------------ sampling
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


def train_loader(dm, cfg: TrainConfig, start_step: int, rank: int = 0, world: int = 1) -> DataLoader:
    total = cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches
    start = start_step * cfg.trainer.accumulate_grad_batches
    if isinstance(dm, CellDataModule):
        base = dm.train_dataloader().dataset
        return TimedLoader(StepCells(base, total, start), batch_size=None, num_workers=dm.cfg.num_workers)
    sampler = StepSampler(len(dm.samples["train"]), cfg.data.batch_size, total, cfg.trainer.seed, start, rank, world)
    return TimedLoader(SampleDataset(dm.samples["train"]), batch_sampler=sampler, collate_fn=dm.collate,
                       num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)


# ------------------------------------------------------------------------------ module
class BiommLightning(L.LightningModule):
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
        return self.model(batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int):
        step = self.global_step
        if _STEP_DELAY:
            time.sleep(_STEP_DELAY)
        torch.manual_seed(self.cfg.trainer.seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(self.cfg.trainer.seed * 7_919 + step)
        batch = self.objectives.prepare(batch, gen)
        out = self.model(batch)
        loss, metrics = self.objectives(out, batch)
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
        super().optimizer_step(*args, **kwargs)
        self.objectives.clamp_()  # learnable temperature stays in [0, ln 100]

    # validation: loss and cross-modal retrieval recall@k over the whole split
    def on_validation_epoch_start(self) -> None:
        self._val, self._val_present, self._val_losses = {}, {}, []

    def validation_step(self, batch: Batch, batch_idx: int):
        out = self.model(batch)
        loss, _ = self.objectives(out, batch)
        self._val_losses.append(float(loss))
        for m, emb in out.pooled.items():
            self._val.setdefault(m, []).append(emb.float().cpu())
            self._val_present.setdefault(m, []).append(out.present[m].cpu())

    def on_validation_epoch_end(self) -> None:
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


class _StepDataModule(L.LightningDataModule):
    """Feeds the trainer: the step-indexed train loader (built when fit starts, after a resume restored the step)."""

    def __init__(self, dm, cfg: TrainConfig):
        super().__init__()
        self.dm, self.cfg = dm, cfg

    def train_dataloader(self):
        t = self.trainer
        self.loader = train_loader(self.dm, self.cfg, t.global_step if t else 0, t.global_rank if t else 0, t.world_size if t else 1)
        return self.loader

    def val_dataloader(self):
        return self.dm.val_dataloader()


class _Timing(Callback):
    """Steady-state time per step waiting for data (the TimedLoader's `next()`, first batch aside)
    against compute (the step itself, first step aside)."""

    def __init__(self, data: "_StepDataModule") -> None:
        self.data = data
        self.compute_s = 0.0
        self._t_start = 0.0
        self._steps = 0

    @property
    def data_s(self) -> float:
        loader = getattr(self.data, "loader", None)
        return loader.fetch_s if loader is not None else 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._steps += 1
        if self._steps > 1:
            self.compute_s += time.perf_counter() - self._t_start


# ------------------------------------------------------------------------------ fit
def code_version() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_run(cfg: TrainConfig, cohort: str | Path, out: str | Path, load_artifacts: bool = False):
    """Data first (fails before any training on a bad config, modality or split), then the model sized by the data."""
    out = Path(out)
    dm = build_datamodule(cohort, cfg.data, out / ARTIFACTS)
    img = cfg.model.adapters.get("imaging")
    dm.prepare(imaging_size=getattr(img, "img_size", 64), spatial_dims=getattr(img, "spatial_dims", 2),
               load_artifacts=load_artifacts)
    model_cfg = cfg.model.model_copy(deep=True)
    sizes = dm.vocab_sizes()
    omics = model_cfg.adapters.get("omics")
    if isinstance(dm, CellDataModule) and omics is not None and getattr(omics, "encoder", "") == "mlp":
        sizes["omics"] = {"n_genes": dm.n_hvg}  # the MLP reads the dense HVG vector
    for modality, values in sizes.items():
        if modality in model_cfg.adapters:
            model_cfg.adapters[modality] = model_cfg.adapters[modality].model_copy(update=values)
    for name in cfg.freeze:
        model_cfg.adapters[name] = model_cfg.adapters[name].model_copy(update={"freeze": True})
    # only the adapters of the modalities fed: others would be dead weight in every checkpoint
    model_cfg.adapters = {m: a for m, a in model_cfg.adapters.items() if m in cfg.data.modalities}
    if model_cfg.objectives.autoregressive.weight == 0:
        # the LLaVA projector only feeds the causal LM: without that objective it is unused (and breaks DDP)
        model_cfg.projector = model_cfg.projector.model_copy(update={"out_dim": None})
    model_cfg = type(model_cfg).model_validate(model_cfg.model_dump())
    return dm, model_cfg


def fit(cfg: TrainConfig, cohort: str | Path, out: str | Path, resume: bool = False,
        progress: bool = True, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train; returns the final validation metrics. `resume` continues from out/checkpoints/last.ckpt."""
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / LAST
    if resume and not last.exists():
        raise ConfigError(f"--resume: no checkpoint at {last}")
    if not resume and last.exists():
        raise ConfigError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm, model_cfg = prepare_run(cfg, cohort, out, load_artifacts=resume)
    out.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_copy(update={"model": model_cfg})
    (out / "train_config.json").write_text(resolved.model_dump_json(indent=2))
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(model_cfg)
    objectives = build_objectives(model_cfg, model)
    module = BiommLightning(model, objectives, resolved, ckpt_dir)
    precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, model_cfg.d)
    run_info = {"cohort": str(Path(cohort).resolve()), "code_version": code_version(), "precision": precision,
                "precision_reason": why, "torch": torch.__version__, "lightning": L.__version__,
                "python": platform.python_version(), "resumed": resume,
                "train_subjects": len(getattr(dm, "samples", {}).get("train", [])) or len(getattr(dm, "rows", {}).get("train", [])),
                "val_subjects": len(getattr(dm, "samples", {}).get("val", [])) or len(getattr(dm, "rows", {}).get("val", []))}
    (out / "run.json").write_text(json.dumps(run_info, indent=2))
    console.print(f"[bold]precision[/]: {precision} ({why})")
    step_data = _StepDataModule(dm, resolved)
    timing = _Timing(step_data)
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:06d}", every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
                        save_last=True, save_top_k=1, monitor="step", mode="max", auto_insert_metric_name=False),
        timing,
        *(extra_callbacks or []),
    ]
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(out), max_steps=t.max_steps, max_epochs=-1, precision=precision,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy="ddp_find_unused_parameters_false" if t.strategy == "ddp" else t.strategy,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        val_check_interval=min(t.val_every_n_steps, t.max_steps) * t.accumulate_grad_batches,
        check_val_every_n_epoch=None, log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        logger=[TensorBoardLogger(str(out), name="tensorboard", version=""), CSVLogger(str(out), name="csv", version="")],
        callbacks=callbacks, enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False,  # StepSampler shards each global batch across ranks itself
        # a new loader for every Lightning epoch, starting at the trainer's global step: after a resume
        # mid-way, Lightning would otherwise iterate the same loader again from its first step
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=step_data, ckpt_path=str(last) if resume else None)
    if trainer.global_rank == 0:
        module.model.save(out / "model")
        save_objectives(module.objectives, out / "model")
        metrics = {**module.final_metrics, "steps": trainer.global_step,
                   "loader_fraction": round(timing.data_s / max(timing.data_s + timing.compute_s, 1e-9), 4)}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if progress:
            print_metrics(metrics)
        return metrics
    return {}


def save_objectives(objectives: WeightedObjectives, folder: Path) -> None:
    """The objectives' own parameters (temperature, masked-modelling heads, causal LM) beside the model:
    imputation and question answering use them after training."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in objectives.state_dict().items()}
    save_file(state, str(folder / "objectives.safetensors"))


def print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title="final validation metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in sorted(metrics.items()):
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)

