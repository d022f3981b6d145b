"""Clinical prediction tasks on MEDS events, declared in YAML (PyHealth / MEDS-style task API).

A task turns a cohort into samples `(subject, prediction time, label)`: candidate prediction times
come from anchor events; only events at or before the prediction time are inputs; the label comes
from after it (an outcome code within a horizon, or a cohort label recorded at that time). Samples
whose outcome cannot be known (follow-up shorter than the horizon) are dropped, not called negative.

Shipped tasks live in biomm/resources/tasks/*.yaml; a user adds one by writing another YAML file."""
from __future__ import annotations

from importlib import resources as importlib_resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from biomm.config import ConfigError, StrictModel, load_config
from biomm.data.samples import Sample
from biomm.data.ehr import EhrEvents, days_since_epoch


class PredictionTimeSpec(StrictModel):
    """When a task predicts: the anchor events that are candidate prediction times."""

    anchor_codes: list[str] = Field(..., min_length=1, description="Events whose times are candidate prediction times ('PREFIX/*' matches a system)")
    per_subject: int = Field(3, ge=1, description="At most this many prediction times per subject (seeded choice)")
    min_history_days: float = Field(365, ge=0, description="Events needed this long before the prediction time")
    seed: int = 0


class LabelSpec(StrictModel):
    """What a task predicts: an outcome code within a horizon, or a cohort label."""

    kind: Literal["code_within", "cohort_label"]
    codes: list[str] = Field(default_factory=list, description="Outcome codes (code_within); 'PREFIX/*' matches a system")
    horizon_days: float = Field(365, gt=0)
    exclude_prior: bool = Field(True, description="Drop samples whose outcome already happened (onset tasks)")
    label_name: str | None = Field(None, description="cohort_label: the labels table entry at the prediction time")
    tolerance_days: float = Field(1.0, ge=0, description="cohort_label: how far the label's time may be from the anchor")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "code_within" and not self.codes:
            raise ValueError("label.kind code_within needs label.codes")
        if self.kind == "cohort_label" and not self.label_name:
            raise ValueError("label.kind cohort_label needs label.label_name")
        return self


class TaskDef(StrictModel):
    """A binary prediction task."""

    name: str = Field(..., pattern=r"^[a-z0-9_]+$")
    description: str
    prediction_time: PredictionTimeSpec
    label: LabelSpec
    requires: list[str] = Field(default_factory=list, description="Modalities a sample must have at its prediction time")


def code_matcher(patterns: list[str]):
    """A function codes [N] -> bool [N]: which codes are one of `patterns` ('PREFIX/*' matches a system)."""
    exact = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def match(codes: np.ndarray) -> np.ndarray:
        hit = np.isin(codes, list(exact)) if exact else np.zeros(len(codes), bool)
        if prefixes:
            hit |= np.array([c.startswith(prefixes) for c in codes], dtype=bool)
        return hit

    return match


def builtin_task_dir() -> Path:
    """The folder of the shipped task YAML files."""
    return Path(str(importlib_resources.files("biomm.resources").joinpath("tasks")))


def load_tasks(extra_dirs: list[str | Path] | None = None) -> dict[str, TaskDef]:
    """The shipped tasks plus every *.yaml in `extra_dirs` (a later file may override a name)."""
    tasks: dict[str, TaskDef] = {}
    for folder in [builtin_task_dir(), *(Path(d) for d in extra_dirs or [])]:
        if not folder.exists():
            raise ConfigError(f"task folder not found: {folder}")
        for path in sorted(folder.glob("*.yaml")):
            task = load_config(TaskDef, path)
            tasks[task.name] = task
    return tasks


def _cohort_labels(cohort_root: Path, name: str) -> dict[str, list[tuple[float, float]]]:
    from biomm.store.cohort import Cohort

    out: dict[str, list[tuple[float, float]]] = {}
    with Cohort(cohort_root, create=False, read_only=True) as c:
        for sid, value, t in c.labels(name):
            day = float(days_since_epoch(np.array([np.datetime64(t, "us")]))[0]) if t else float("nan")
            out.setdefault(sid, []).append((day, float(value)))
    return out


def code_system(code: str) -> str:
    """The system of a MEDS code: the part before '/' ('SNOMED/123' -> 'SNOMED'; 'MEDS_DEATH' is its own)."""
    return code.split("/", 1)[0]


def check_task(task: TaskDef, events: EhrEvents, cohort_root: str | Path) -> None:
    """ConfigError naming the task and the field when a code names a system the cohort has no event of, or
    when no subject has the outcome (no code of `label.codes`; no value of the cohort label)."""
    codes = np.unique(events.codes_text.astype(str)) if len(events.codes_text) else np.zeros(0, str)
    systems = sorted({code_system(c) for c in codes})
    fields = [("prediction_time.anchor_codes", task.prediction_time.anchor_codes), ("label.codes", task.label.codes)]
    for name, patterns in fields:
        unknown = sorted({code_system(p.rstrip("*")) for p in patterns} - set(systems))
        if unknown:
            raise ConfigError(f"task {task.name}: {name} names unknown code system {', '.join(map(repr, unknown))} "
                              f"(cohort {Path(cohort_root).name} has: {', '.join(systems) or 'no events'})")
    if task.label.kind == "code_within" and not code_matcher(task.label.codes)(codes).any():
        raise ConfigError(f"task {task.name}: label.codes: no subject of cohort {Path(cohort_root).name} has the "
                          f"outcome {', '.join(task.label.codes)}")
    if task.label.kind == "cohort_label":
        values = [v for rows in _cohort_labels(Path(cohort_root), task.label.label_name).values() for _, v in rows]
        if not any(v > 0 for v in values):
            raise ConfigError(f"task {task.name}: label.label_name: no subject of cohort {Path(cohort_root).name} has "
                              f"a positive {task.label.label_name!r} label ({len(values)} label rows)")


def build_samples(task: TaskDef, events: EhrEvents, cohort_root: str | Path,
                  subjects: list[str] | None = None) -> list[Sample]:
    """Samples of `task` for `subjects` (default: every subject with events), labels in `labels[task.name]`.
    ConfigError (naming the task and field) when the task cannot apply to the cohort (see `check_task`)."""
    check_task(task, events, cohort_root)
    anchor = code_matcher(task.prediction_time.anchor_codes)
    outcome = code_matcher(task.label.codes) if task.label.codes else None
    labels = _cohort_labels(Path(cohort_root), task.label.label_name) if task.label.kind == "cohort_label" else {}
    rng = np.random.default_rng(task.prediction_time.seed)
    horizon = task.label.horizon_days
    out: list[Sample] = []
    for sid in subjects if subjects is not None else sorted(events.subjects):
        if sid not in events:
            continue
        s, e = events.subjects[sid]
        codes, times = events.codes_text[s:e], events.times[s:e]
        first, last = times[0], times[-1]
        candidates = np.unique(times[anchor(codes)])
        candidates = candidates[candidates - first >= task.prediction_time.min_history_days]
        outcome_times = times[outcome(codes)] if outcome is not None else np.zeros(0)
        keep: list[tuple[float, float]] = []
        for t in candidates:
            if task.label.kind == "code_within":
                if task.label.exclude_prior and (outcome_times <= t).any():
                    continue
                positive = ((outcome_times > t) & (outcome_times <= t + horizon)).any()
                if not positive and last < t + horizon:
                    continue  # censored: the record ends before the horizon
                keep.append((float(t), float(positive)))
            else:
                near = [v for day, v in labels.get(sid, []) if abs(day - t) <= task.label.tolerance_days]
                if near:
                    keep.append((float(t), near[0]))
        if len(keep) > task.prediction_time.per_subject:
            idx = np.sort(rng.choice(len(keep), task.prediction_time.per_subject, replace=False))
            keep = [keep[i] for i in idx]
        out.extend(Sample(sid, t, {task.name: y}) for t, y in keep)
    return out


def describe_samples(samples: list[Sample], task: str) -> dict:
    """Counts of a task's samples: samples, subjects, positives and prevalence."""
    y = np.array([s.labels[task] for s in samples]) if samples else np.zeros(0)
    return {"samples": len(samples), "subjects": len({s.subject_id for s in samples}), "positives": int(y.sum()),
            "prevalence": float(y.mean()) if len(y) else 0.0}
