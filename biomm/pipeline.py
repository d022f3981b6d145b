"""Pipelines: YAML lists of registered steps (ingest -> train -> evaluate -> query).

A step is a function `(ctx: PipelineContext, **with) -> dict` registered with `@step("kind")`;
what it returns is kept in `ctx.results[name]` for later steps (e.g. a run folder)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from biomm.config import ConfigError, PipelineConfig

STEPS: dict[str, Callable[..., dict | None]] = {}
console = Console(stderr=True)


def step(kind: str):
    def register(fn):
        if kind in STEPS:
            raise ValueError(f"pipeline step '{kind}' registered twice")
        STEPS[kind] = fn
        return fn

    return register


@dataclass
class PipelineContext:
    workdir: Path
    project_root: Path
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, value: str | Path) -> Path:
        """Resolve a step argument: `{workdir}` expands; relative paths are relative to the project root."""
        text = str(value).replace("{workdir}", str(self.workdir))
        p = Path(text)
        return p if p.is_absolute() else (self.project_root / p)


def run_pipeline(cfg: PipelineConfig, project_root: Path, only: list[str] | None = None) -> dict[str, Any]:
    import biomm.cli  # noqa: F401  (registers every command module's steps)

    unknown = [s.kind for s in cfg.steps if s.kind not in STEPS]
    if unknown:
        raise ConfigError(f"unknown pipeline step kind(s) {unknown}; known: {sorted(STEPS)}")
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
        ctx.results[name] = STEPS[s.kind](ctx, **s.with_) or {}
        console.print(f"[green]done[/] {name} in {time.perf_counter() - t0:.1f}s")
    return ctx.results
