"""Training on PyTorch Lightning: the LightningModule around BiommModel + objectives, and `fit`.

Determinism across interruptions: batch k of a run is a function of (seed, k) — the sampler
draws a seeded permutation per epoch and starts at the restored global step, and every step
reseeds torch from (seed, step) — so a run killed and resumed from its last checkpoint ends with
the same weights as one that was never interrupted (bitwise in fp32, within bf16 tolerance)."""
import json
import logging
import platform
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from biomm.config import ConfigError
from biomm.data.datamodule import ARTIFACTS, CellDataModule, build_datamodule
from biomm.data.samples import SampleDataset
from biomm.model.factory import build_model
from biomm.objectives import WeightedObjectives, build_objectives
from biomm.train.config import TrainConfig
from biomm.train.heads import quiet_lightning
from biomm.train.plan import LAST, BiommLightning
from biomm.train.precision import resolve_precision
from biomm.train.sampling import StepCells, StepSampler, TimedLoader
from biomm.train.timing import StepTimer

console = Console(stderr=True)


def train_loader(dm, cfg: TrainConfig, start_step: int, rank: int = 0, world: int = 1) -> DataLoader:
    """The step-indexed train loader from `start_step` on (this rank's slice of each global batch), timed."""
    total = cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches
    start = start_step * cfg.trainer.accumulate_grad_batches
    if isinstance(dm, CellDataModule):
        base = dm.train_dataloader().dataset
        return TimedLoader(StepCells(base, total, start), batch_size=None, num_workers=dm.cfg.num_workers)
    sampler = StepSampler(len(dm.samples["train"]), cfg.data.batch_size, total, cfg.trainer.seed, start, rank, world)
    return TimedLoader(SampleDataset(dm.samples["train"]), batch_sampler=sampler, collate_fn=dm.collate,
                       num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)


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


def _loader_fraction(data: "_StepDataModule", timer: StepTimer) -> float:
    """Steady-state share of a step spent waiting for data: the TimedLoader's `next()` (first batch aside)
    against the steps' compute (first step aside)."""
    loader = getattr(data, "loader", None)
    data_s = loader.fetch_s if loader is not None else 0.0
    return round(data_s / max(data_s + sum(timer.steady(1)), 1e-9), 4)


# ------------------------------------------------------------------------------ fit
def code_version() -> str:
    """`git describe` of the code that trains ("unknown" outside a checkout)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def without_absent_modalities(cfg: TrainConfig, cohort: str | Path) -> TrainConfig:
    """`cfg` fed only the modalities the cohort has (patients): an absent one is dropped with one warning line
    (its adapter with it); `data.modalities` keeps what is trained on, so the run records it. No modality: error."""
    if cfg.data.kind != "patients":
        return cfg
    from biomm.store.cohort import Cohort

    with Cohort(cohort, create=False, read_only=True) as c:
        have = c.modality_counts()
    absent = [m for m in cfg.data.modalities if m not in have]
    if not absent:
        return cfg
    kept = [m for m in cfg.data.modalities if m in have]
    if not kept:
        raise ConfigError(f"cohort {cohort} has none of the modalities {', '.join(cfg.data.modalities)} (data.modalities)")
    console.print(f"[yellow]warning[/]: cohort {cohort} has no {', '.join(absent)} data: training on "
                  f"{', '.join(kept)} without the {', '.join(absent)} adapter", soft_wrap=True)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": kept})})


def prepare_run(cfg: TrainConfig, cohort: str | Path, out: str | Path, load_artifacts: bool = False):
    """Data first (fails before any training on a bad config, modality or split), then the model sized by the data."""
    out = Path(out)
    cfg = without_absent_modalities(cfg, cohort)
    dm = build_datamodule(cohort, cfg.data, out / ARTIFACTS)
    dm.prepare(cfg.model.adapters, load_artifacts=load_artifacts)
    model_cfg = cfg.model.model_copy(deep=True)
    for modality, values in dm.vocab_sizes().items():  # the one channel by which the data sizes the model
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


def _trainer(t, out: Path, precision: str, callbacks: list[Callback], progress: bool) -> L.Trainer:
    """The Lightning Trainer of a run (`t`: the trainer config)."""
    return L.Trainer(
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
    resolved = cfg.model_copy(update={"model": model_cfg, "data": dm.cfg})
    dropped = [m for m in cfg.data.modalities if m not in dm.cfg.modalities]
    (out / "train_config.json").write_text(resolved.model_dump_json(indent=2))
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(model_cfg)
    for modality, tables in dm.adapter_tables().items():  # e.g. the EHR codes' display word pieces
        model.adapters[modality].set_tables(tables)
    objectives = build_objectives(model_cfg, model)
    module = BiommLightning(model, objectives, resolved, ckpt_dir)
    precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, model_cfg.d)
    run_info = {"cohort": str(Path(cohort).resolve()), "code_version": code_version(), "precision": precision,
                "precision_reason": why, "torch": torch.__version__, "lightning": L.__version__,
                "python": platform.python_version(), "resumed": resume, "dropped_modalities": dropped,
                "train_subjects": len(getattr(dm, "samples", {}).get("train", [])) or len(getattr(dm, "rows", {}).get("train", [])),
                "val_subjects": len(getattr(dm, "samples", {}).get("val", [])) or len(getattr(dm, "rows", {}).get("val", []))}
    (out / "run.json").write_text(json.dumps(run_info, indent=2))
    console.print(f"[bold]precision[/]: {precision} ({why})")
    step_data = _StepDataModule(dm, resolved)
    timing = StepTimer()
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:06d}", every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
                        save_last=True, save_top_k=1, monitor="step", mode="max", auto_insert_metric_name=False),
        timing,
        *(extra_callbacks or []),
    ]
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    t = cfg.trainer
    # Lightning's start-up notes (accelerator, a cloud-logger "Tip") follow the CLI's --verbose like other libraries'
    notes = logging.getLogger().getEffectiveLevel() <= logging.INFO
    with nullcontext() if notes else quiet_lightning():
        trainer = _trainer(t, out, precision, callbacks, progress)
        trainer.fit(module, datamodule=step_data, ckpt_path=str(last) if resume else None)
    if trainer.global_rank == 0:
        module.model.save(out / "model")
        save_objectives(module.objectives, out / "model")
        metrics = {**module.final_metrics, "steps": trainer.global_step,
                   "loader_fraction": _loader_fraction(step_data, timing)}
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
    """The final metrics as a table on the console."""
    table = Table(title="final validation metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in sorted(metrics.items()):
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)

