"""The `biomm` command: the apps of `biomm.commands.apps` with every command module registered.

Command modules import heavy libraries inside their commands, so `biomm --help` starts fast."""
from __future__ import annotations

import sys

from biomm.commands import command_modules
from biomm.commands.apps import app

command_modules()  # registers every command on `app`


def main() -> None:
    """Entry point of the `biomm` console script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


__all__ = ["app", "main"]
