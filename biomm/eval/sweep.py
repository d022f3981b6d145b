"""`biomm sweep SWEEP.yaml`: the design triangle measured, a grid over fusion timing x operation x
objective set (x modalities), every cell trained and evaluated on the same cohort, split, seeds and
step budget.

Per cell: task AUROC by subject-level 5-fold cross-validation over every sample of the task (linear probes
on the fused embedding, on each modality's and on all of them, beside the bag-of-codes LR and count GBM on
the same folds; subject-bootstrap 95% intervals), cross-modal retrieval recall on the
test subjects (`biomm.eval.retrieval`, with its BM25 and CCA baselines, the same for every cell), and
cost (parameters, training steps per second). Writes sweep.json, sweep.md and sweep.png.

Every cell is checked before anything trains (an unknown timing, operation or objective, or
modalities the cohort lacks, is one error naming the cell). A finished cell keeps its result.json
and is never retrained; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from biomm.config import ConfigError, StrictModel
from biomm.train.timing import StepTimer

TIMINGS = ("early", "late", "middle")
DEFAULT_OP = "default"


class SweepGrid(StrictModel):
    """The axes of a sweep; every combination is a cell."""

    timing: list[str] = Field(default_factory=lambda: ["middle"], min_length=1, description="early / late / middle")
    op: list[str] = Field(default_factory=lambda: [DEFAULT_OP], min_length=1, description=(
        "Fusion op (biomm.fusion.ops): late fuses the pooled embeddings with it, early / middle the fused streams; "
        "'default' = concat (late), CLS (early), mean of the fused tokens (middle)"))
    objectives: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=lambda: {"contrastive": {"contrastive": {"weight": 1.0}}}, min_length=1,
        description="Named objective sets: objective -> its config; objectives not named get weight 0")
    modalities: list[list[str]] | None = Field(None, description="Modality sets; default: the training config's")


class SweepConfig(StrictModel):
    """What `biomm sweep` reads: the base training config, the grid, the shared budget and what to measure."""

    name: str = "sweep"
    train_config: str = Field(..., description="Base training config YAML (every cell starts from it)")
    cohort: str | None = Field(None, description="Cohort folder (or --cohort)")
    out: str | None = Field(None, description="Sweep folder (or --out)")
    set: list[str] = Field(default_factory=list, description="Overrides for every cell (key=value), e.g. the step budget")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    tasks: list[str] = Field(default_factory=list, description="Tasks whose AUROC is measured (biomm/resources/tasks)")
    retrieval_pair: str = Field("ehr->text", description="The pair whose recall the table and plot lead with")
    n_boot: int = Field(1000, ge=10, description="Bootstrap resamples of every interval")
    grid: SweepGrid = SweepGrid()


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """SWEEP.yaml -> SweepConfig (`train_config` relative to the YAML's folder, then the working directory)."""
    from biomm.config import load_config

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    cfg = load_config(SweepConfig, data, overrides)
    base = Path(cfg.train_config)
    if not base.is_absolute() and not base.exists() and (path.parent / base).exists():
        cfg = cfg.model_copy(update={"train_config": str(path.parent / base)})
    return cfg


def cell_id(timing: str, op: str, objectives: str, modalities: list[str] | None, seed: int, seeds: int) -> str:
    """A cell's folder name: timing-op-objectives[-modalities][-seedN]."""
    parts = [timing, op, objectives] + (["+".join(modalities)] if modalities else []) + ([f"seed{seed}"] if seeds > 1 else [])
    return "-".join(parts)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plan_cells(cfg: SweepConfig, cohort: str | Path) -> list[dict[str, Any]]:
    """Every cell with its validated TrainConfig; raises ConfigError naming the first bad cell (nothing trains)."""
    from biomm.fusion.ops import FUSION_OPS
    from biomm.model.config import ObjectivesConfig
    from biomm.store.cohort import Cohort
    from biomm.train.config import load_train_config, resolve_model_file

    base_path = Path(cfg.train_config)
    if not base_path.exists():
        raise ConfigError(f"sweep {cfg.name}: train_config {base_path} not found")
    base = resolve_model_file(yaml.safe_load(base_path.read_text()) or {}, base_path)
    base.pop("model_file", None)
    with Cohort(cohort, create=False, read_only=True) as c:
        have = c.modality_counts()
    g = cfg.grid
    cells = []
    mod_sets = g.modalities or [None]
    for timing, op, (obj_name, obj_set), mods, seed in itertools.product(g.timing, g.op, g.objectives.items(), mod_sets,
                                                                         cfg.seeds):
        cid = cell_id(timing, op, obj_name, mods, seed, len(cfg.seeds))
        where = f"sweep {cfg.name}, cell '{cid}'"
        if timing not in TIMINGS:
            raise ConfigError(f"{where}: unknown timing '{timing}' (known: {', '.join(TIMINGS)})")
        if op != DEFAULT_OP and op not in FUSION_OPS:
            raise ConfigError(f"{where}: unknown fusion op '{op}' (known: {DEFAULT_OP}, {', '.join(FUSION_OPS)})")
        unknown = [o for o in obj_set if o not in ObjectivesConfig.model_fields]
        if unknown:
            raise ConfigError(f"{where}: unknown objective(s) {unknown} in set '{obj_name}' "
                              f"(known: {', '.join(ObjectivesConfig.model_fields)})")
        modalities = mods or (base.get("data") or {}).get("modalities") or []
        missing = [m for m in modalities if m not in have]
        if missing:
            held = ", ".join(f"{m} ({n} subjects)" for m, n in sorted(have.items())) or "nothing"
            raise ConfigError(f"{where}: the cohort {cohort} has no {', '.join(missing)} data (it has {held})")
        backbone: dict[str, Any] = {"timing": timing}
        if timing == "late":
            backbone["fusion_op"] = "concat" if op == DEFAULT_OP else op
            backbone["stream_op"] = None  # a base preset's stream op has no stream to act on here
        else:
            backbone["stream_op"] = None if op == DEFAULT_OP else op
        objectives = {name: {"weight": 0.0} for name in ObjectivesConfig.model_fields}
        objectives = _deep_merge(objectives, {k: dict(v or {}) for k, v in obj_set.items()})
        over = {"name": f"{cfg.name}-{cid}", "model": {"backbone": backbone, "objectives": objectives},
                "trainer": {"seed": seed}}
        if mods:
            over["data"] = {"modalities": list(mods)}
        data = _deep_merge(base, over)  # objectives absent from the set: weight 0, other settings from the base
        try:
            train_cfg = load_train_config(data, cfg.set)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None
        if not any(getattr(train_cfg.model.objectives, n).weight > 0 for n in ObjectivesConfig.model_fields):
            raise ConfigError(f"{where}: objective set '{obj_name}' gives no objective a weight > 0")
        cells.append({"id": cid, "timing": timing, "op": op, "objectives": obj_name, "modalities": modalities,
                      "seed": seed, "config": train_cfg})
    return cells


BASELINE_ROWS = ("bag_of_codes_lr", "count_gbm")
"""Rows that do not depend on the cell (shown once, under the table)."""


def task_auroc(loaded, dm, task, cohort: Path, n_boot: int, folds: int = 5) -> dict[str, Any]:
    """Cross-validated AUROC of `task` on every sample: subject-level `folds`-fold CV (one repeat, seed 0) with a
    subject-bootstrap 95% interval, for linear probes on the fused embedding, on each modality's, on all of them
    (`all`) and beside the bag of codes (`hybrid`), and for the bag-of-codes LR and count GBM on the same samples:
    `{"samples", "positives", "subjects", "folds", "auroc": {row: {"value", "ci"}}}` (or `skipped`)."""
    from biomm.data.tasks import build_samples
    from biomm.eval.clinical import _with_required, cross_validate, task_rows
    from biomm.heads.clinical import embed_samples

    samples = _with_required(build_samples(task, dm.events, cohort), task, dm.collate)
    y = np.array([s.labels[task.name] for s in samples], dtype=float)
    groups = np.array([s.subject_id for s in samples])
    info: dict[str, Any] = {"samples": len(samples), "positives": int(y.sum()), "subjects": int(len(np.unique(groups)))}
    if not samples:
        info["skipped"] = "no samples"
        return info
    rows = task_rows(embed_samples(loaded.model, dm.collate, samples), dm.events, samples, list(loaded.modalities))
    try:
        cv = cross_validate(rows, y, groups, folds=folds, seeds=(0,), ks=(), bootstrap=n_boot)
    except ValueError as exc:
        info["skipped"] = str(exc)
        return info
    info["folds"] = cv["folds"]
    info["auroc"] = {r.removeprefix("biomm_"): {"value": cv[r]["full"]["auroc"],
                                                "ci": [cv[r]["full"]["auroc_low"], cv[r]["full"]["auroc_high"]]}
                     for r in rows if cv[r]["full"]["auroc"] is not None}
    return info


def run_cell(cell: dict[str, Any], cohort: Path, folder: Path, tasks: dict, n_boot: int, progress: bool = False) -> dict:
    """Train (or resume) one cell, export it, measure it; writes and returns folder/result.json."""
    from biomm.eval.retrieval import evaluate_retrieval
    from biomm.model.bundle import load
    from biomm.model.export import export
    from biomm.train.run import fit

    result_path = folder / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run, model_dir = folder / "run", folder / "model"
    timer = StepTimer()
    if not (run / "metrics.json").exists():
        resume = (run / "checkpoints" / "last.ckpt").exists()
        fit(cell["config"], cohort, run, resume=resume, progress=progress, extra_callbacks=[timer])
        (folder / "timing.json").write_text(json.dumps({"steps": timer.steps, "seconds": sum(timer.steady(1)), "resumed": resume}))
    timing = json.loads((folder / "timing.json").read_text()) if (folder / "timing.json").exists() else {}
    export(run, model_dir)
    loaded = load(model_dir)
    dm = loaded.datamodule(cohort)
    result: dict[str, Any] = {k: cell[k] for k in ("id", "timing", "op", "objectives", "modalities", "seed")}
    result["parameters"] = int(sum(p.numel() for p in loaded.model.parameters()))
    steps = max(0, timing.get("steps", 0) - 1)
    result["steps_per_s"] = steps / timing["seconds"] if timing.get("seconds") else None
    result["steps"] = cell["config"].trainer.max_steps
    result["tasks"] = {name: task_auroc(loaded, dm, t, cohort, n_boot) for name, t in tasks.items()}
    result["retrieval"] = evaluate_retrieval(loaded, cohort, None, n_boot=n_boot, dm=dm)
    result_path.write_text(json.dumps(result, indent=2, default=str))
    return result


def run_sweep(cfg: SweepConfig, cohort: str | Path | None = None, out: str | Path | None = None,
              progress: bool = True, log=print) -> dict[str, Any]:
    """Plan and check every cell, then train and measure those not finished; writes sweep.json / .md / .png."""
    from biomm.data.tasks import load_tasks

    cohort = Path(cohort or cfg.cohort or "")
    out = Path(out or cfg.out or f"sweeps/{cfg.name}")
    if not cohort.is_dir():
        raise ConfigError(f"sweep {cfg.name}: cohort folder {cohort} not found (give cohort: or --cohort)")
    known = load_tasks([])
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        raise ConfigError(f"sweep {cfg.name}: unknown task(s) {unknown} (known: {', '.join(sorted(known))})")
    cells = plan_cells(cfg, cohort)  # every cell checked before any trains
    out.mkdir(parents=True, exist_ok=True)
    tasks = {t: known[t] for t in cfg.tasks}
    results = []
    for i, cell in enumerate(cells, 1):
        folder = out / "cells" / cell["id"]
        done = (folder / "result.json").exists()
        log(f"[{i}/{len(cells)}] {cell['id']}{' (done, kept)' if done else ''}")
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        results.append(run_cell(cell, cohort, folder, tasks, cfg.n_boot, progress=False))
        if not done:
            log(f"    finished in {time.perf_counter() - t0:.0f} s")
    table = {"name": cfg.name, "cohort": str(cohort), "train_config": cfg.train_config, "set": cfg.set,
             "seeds": cfg.seeds, "tasks": cfg.tasks, "retrieval_pair": cfg.retrieval_pair, "cells": results}
    (out / "sweep.json").write_text(json.dumps(table, indent=2, default=str))
    (out / "sweep.md").write_text(sweep_markdown(table))
    sweep_plot(table, out / "sweep.png")
    return table


def _fmt(v: dict | None, digits: int = 3) -> str:
    if not v or "value" not in v:
        return "n/a"
    return f"{v['value']:.{digits}f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"


def _recall(result: dict, pair: str, method: str = "biomm", k: int = 1) -> dict | None:
    return (result["retrieval"]["pairs"].get(pair) or {}).get(method, {}).get(f"recall@{k}")


def sweep_markdown(table: dict[str, Any]) -> str:
    """The sweep table as Markdown: one row per cell, then the baselines shared by every cell."""
    pair = table["retrieval_pair"]
    lines = [f"# biomm sweep: {table['name']}", "",
             f"Cohort `{table['cohort']}`, base config `{table['train_config']}`, overrides {table['set'] or 'none'}, "
             f"seeds {table['seeds']}. Every cell: the same data, split, seeds and step budget. Task AUROC: subject-level "
             "5-fold cross-validation over every sample (linear probes on the frozen embeddings), subject-bootstrap 95% "
             "intervals; retrieval: the test subjects, bootstrap 95% intervals.", ""]
    rows = sorted({m for r in table["cells"] for t in r["tasks"].values() for m in t.get("auroc", {})}
                  - {"fused", *BASELINE_ROWS})
    head = ["cell", "params", "steps/s"]
    for t in table["tasks"]:
        head += [f"{t} AUROC fused"] + [f"{t} {m}" for m in rows]
    head += [f"R@1 {pair}", f"R@10 {pair}", "mean R@1 (all pairs)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["cells"]:
        row = [r["id"], f"{r['parameters'] / 1e3:.0f}k", f"{r['steps_per_s']:.1f}" if r.get("steps_per_s") else "n/a"]
        for t in table["tasks"]:
            info = r["tasks"].get(t, {})
            if "skipped" in info:
                row += [f"skipped: {info['skipped']}"] + [""] * len(rows)
            else:
                row += [_fmt(info["auroc"].get("fused"))] + [_fmt(info["auroc"].get(m)) for m in rows]
        r1 = [p["biomm"]["recall@1"]["value"] for p in r["retrieval"]["pairs"].values()]
        row += [_fmt(_recall(r, pair)), _fmt(_recall(r, pair, k=10)), f"{np.mean(r1):.3f}" if r1 else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    if table["cells"]:
        first = table["cells"][0]["tasks"]
        lines += ["", "Task baselines (the same samples and folds for every cell):", "",
                  "| task | samples (positives) | " + " | ".join(BASELINE_ROWS) + " |", "|---|---|" + "---|" * len(BASELINE_ROWS)]
        for t in table["tasks"]:
            info = first.get(t, {})
            lines.append(f"| {t} | {info.get('samples', 0)} ({info.get('positives', 0)}) | "
                         + " | ".join(_fmt(info.get("auroc", {}).get(b)) for b in BASELINE_ROWS) + " |")
        ref = table["cells"][0]["retrieval"]["pairs"]
        lines += ["", "Baselines (the same for every cell) and chance, recall@1:", "",
                  "| pair | n | chance | BM25 | CCA |", "|---|---|---|---|---|"]
        for p, v in ref.items():
            lines.append(f"| {p} | {v['n']} | {v['chance']['recall@1']:.3f} | {_fmt(v.get('bm25', {}).get('recall@1'))} | "
                         f"{_fmt(v.get('cca', {}).get('recall@1'))} |")
    lines += ["", "![sweep](sweep.png)", ""]
    return "\n".join(lines)


def sweep_plot(table: dict[str, Any], path: Path) -> Path:
    """Three panels per cell: task AUROC (fused, 95% CI), recall@1 of the lead pair (95% CI, BM25 / CCA / chance
    as lines) and training steps per second."""
    from biomm.eval import plots

    plt = plots.plt
    cells = table["cells"]
    ids = [r["id"] for r in cells]
    y = np.arange(len(ids))
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(ids) + 1.6), dpi=110, sharey=True)

    def bars(ax, values, title, xlim=None):
        v = [x["value"] if x else np.nan for x in values]
        err = [[x["value"] - x["ci"][0] if x else 0 for x in values], [x["ci"][1] - x["value"] if x else 0 for x in values]]
        ax.barh(y, v, xerr=err, capsize=2, color="tab:blue")
        ax.set(title=title, xlim=xlim)

    task = table["tasks"][0] if table["tasks"] else None
    bars(axes[0], [r["tasks"].get(task, {}).get("auroc", {}).get("fused") if task else None for r in cells],
         f"{task} AUROC (fused)" if task else "no task", (0, 1))
    axes[0].axvline(0.5, color="k", ls=":", lw=1)
    pair = table["retrieval_pair"]
    bars(axes[1], [_recall(r, pair) for r in cells], f"recall@1 {pair}", (0, 1))
    ref = cells[0]["retrieval"]["pairs"].get(pair, {}) if cells else {}
    for name, style in (("bm25", "--"), ("cca", "-.")):
        if name in ref:
            axes[1].axvline(ref[name]["recall@1"]["value"], color="tab:red" if name == "bm25" else "tab:green",
                            ls=style, lw=1, label=name)
    if ref:
        axes[1].axvline(ref["chance"]["recall@1"], color="k", ls=":", lw=1, label="chance")
        axes[1].legend(fontsize=7)
    axes[2].barh(y, [r.get("steps_per_s") or 0 for r in cells], color="tab:gray")
    axes[2].set(title="training steps / s")
    axes[0].set_yticks(y, ids, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
