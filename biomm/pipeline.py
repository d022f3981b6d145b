"""Pipelines: YAML lists of steps (ingest -> train -> evaluate -> query).

A step is a function `(ctx: PipelineContext, **with) -> dict` marked with `@step("kind")`; the
command modules define them, and `run_pipeline` is given the steps it may run (`collect_steps`).
What a step returns is kept in `ctx.results[name]` for later steps (e.g. a run folder)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from rich.console import Console

from biomm.config import ConfigError, PipelineConfig

StepFn = Callable[..., "dict | None"]
STEP_ATTR = "__biomm_pipeline_step__"


def step(kind: str) -> Callable[[StepFn], StepFn]:
    """Mark a function as the pipeline step `kind` (found by `collect_steps`)."""

    def mark(fn: StepFn) -> StepFn:
        setattr(fn, STEP_ATTR, kind)
        return fn

    return mark


def collect_steps(modules: Iterable[ModuleType]) -> dict[str, StepFn]:
    """Every function marked with `@step` in `modules`, by kind; a kind defined twice is an error."""
    steps: dict[str, StepFn] = {}
    for module in modules:
        for value in vars(module).values():
            kind = getattr(value, STEP_ATTR, None)
            if kind is None or getattr(value, "__module__", None) != module.__name__:
                continue
            if kind in steps and steps[kind] is not value:
                raise ValueError(f"pipeline step '{kind}' defined twice ({steps[kind].__module__}, {module.__name__})")
            steps[kind] = value
    return steps


@dataclass
class PipelineContext:
    """What every step sees: the pipeline's work folder, the project root and earlier steps' results."""

    workdir: Path
    project_root: Path
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, value: str | Path) -> Path:
        """Resolve a step argument: `{workdir}` expands; relative paths are relative to the project root."""
        text = str(value).replace("{workdir}", str(self.workdir))
        p = Path(text)
        return p if p.is_absolute() else (self.project_root / p)


def check_steps(cfg: PipelineConfig, steps: dict[str, StepFn]) -> None:
    """Raise ConfigError naming the pipeline and any step kind of `cfg` that `steps` lacks."""
    unknown = [s.kind for s in cfg.steps if s.kind not in steps]
    if unknown:
        raise ConfigError(f"pipeline {cfg.name}: unknown step kind(s) {unknown}; known: {sorted(steps)}")


def run_pipeline(cfg: PipelineConfig, project_root: Path, steps: dict[str, StepFn],
                 only: list[str] | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run `cfg`'s steps in order (or only those named in `only`); returns each step's result by name."""
    console = console or Console(stderr=True)
    check_steps(cfg, steps)
    workdir = Path(cfg.workdir)
    if not workdir.is_absolute():
        workdir = project_root / workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = PipelineContext(workdir=workdir, project_root=project_root)
    for i, s in enumerate(cfg.steps, 1):
        name = s.name or s.kind
        if only and name not in only:
            continue
        console.rule(f"[bold]step {i}/{len(cfg.steps)}: {name}")
        t0 = time.perf_counter()
        ctx.results[name] = steps[s.kind](ctx, **s.with_) or {}
        console.print(f"[green]done[/] {name} in {time.perf_counter() - t0:.1f}s")
    return ctx.results
