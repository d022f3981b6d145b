"""CLI commands and pipeline steps, one module per feature; each registers its commands on import.

Modules here import only light libraries at the top (typer, pathlib): heavy ones (torch, scanpy,
monai, transformers) are imported inside the commands, so `biomm --help` starts fast."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """Every command module of this package, imported (which registers its commands), by name."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in ("apps", "common"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
