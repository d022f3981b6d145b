"""The Typer apps the command modules register on: `biomm`, `biomm ingest`, `biomm cohort`, `biomm bench`, `biomm export`."""
from __future__ import annotations

import typer
from typer.core import TyperGroup



def _quiet_flags(command, ctx) -> None:
    """Flags (`--json`, `--full`, `--help`, ...) take no value: show no `<bool>` type for them in --help."""
    helper = command.get_help_option(ctx) if command is not None else None
    for param in [*getattr(command, "params", []), *([helper] if helper is not None else [])]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class QuietFlagsGroup(TyperGroup):
    """A command group whose --help (its own and its commands') shows flags without a `<bool>` type."""

    def get_command(self, ctx, cmd_name):
        """The sub-command, with its boolean flags shown without a type."""
        command = super().get_command(ctx, cmd_name)
        _quiet_flags(command, ctx)
        return command

    def format_help(self, ctx, formatter):
        """This group's help, its boolean flags shown without a type."""
        _quiet_flags(self, ctx)
        return super().format_help(ctx, formatter)


app = typer.Typer(cls=QuietFlagsGroup, help="biomm: multimodal biomedical foundation models.", no_args_is_help=True,
                  add_completion=False)
ingest_app = typer.Typer(cls=QuietFlagsGroup, help="Ingest sources into a cohort (validated, de-identified, bad input quarantined).", no_args_is_help=True)
cohort_app = typer.Typer(cls=QuietFlagsGroup, help="Inspect a cohort.", no_args_is_help=True)
bench_app = typer.Typer(cls=QuietFlagsGroup, help="Benchmarks: each prints one JSON object, figures as ratios against a peer in the same run.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"biomm {version('biomm')}")
        raise typer.Exit()


def quiet_libraries(verbose: bool) -> None:
    """Library warnings (pydicom, MONAI, scanpy, ...) go through `logging` (py.warnings), shown only with --verbose;
    without it, transformers' progress bars and advisories are off too."""
    import logging
    import os

    logging.captureWarnings(True)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the biomm version and exit"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library warnings and log messages"),
) -> None:
    """biomm: multimodal biomedical foundation models."""
    quiet_libraries(verbose)
app.add_typer(ingest_app, name="ingest")
app.add_typer(cohort_app, name="cohort")
app.add_typer(bench_app, name="bench")


class _ExportGroup(TyperGroup):
    """`biomm export RUN --to DIR` (a model: the `model` subcommand, the default) or `biomm export meds COHORT OUT`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["model", *args]
        return super().resolve_command(ctx, args)


export_app = typer.Typer(cls=_ExportGroup, no_args_is_help=True,
                         help="Export a trained model (`biomm export RUN --to DIR`) or a cohort (`biomm export meds COHORT OUT`).")
app.add_typer(export_app, name="export")
