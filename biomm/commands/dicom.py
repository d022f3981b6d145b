"""`biomm ingest dicom`, `biomm ingest dicomweb`, `biomm bench ingest-dicom` and the imaging pipeline steps."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import bench_app, ingest_app
from biomm.commands.common import check_cohort_folder, deid_key as resolve_deid_key, print_summary, user_errors
from biomm.config import load_config
from biomm.pipeline import PipelineContext, step


def _config(config: Path | None, overrides: list[str], no_deid: bool, deid_key: str | None,
            studies: list[str] | None = None):
    """The DicomIngestConfig of a command line: the YAML, its `--set` overrides, then the flags."""
    from biomm.ingest.imaging.config import DicomIngestConfig

    cfg = load_config(DicomIngestConfig, config, overrides)
    if no_deid:
        cfg.deid.enabled = False
    if deid_key:
        cfg.deid.key = deid_key
    if studies:
        cfg.studies = list(studies)
    return cfg


@ingest_app.command("dicom")
def ingest_dicom_cmd(
    sources: List[Path] = typer.Argument(..., help="DICOM files, folders (recursive) or DICOMDIR files"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML DicomIngestConfig (see configs/imaging/)"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value (e.g. intensity.window=lung)"),
    no_deid: bool = typer.Option(False, "--no-deid", help="Data is already de-identified: keep UIDs, ids and dates"),
    deid_key: Optional[str] = typer.Option(None, "--deid-key", help="De-identification key (shows in `ps`: prefer --deid-key-file or BIOMM_DEID_KEY; default: the cohort's key file)"),
    deid_key_file: Optional[Path] = typer.Option(None, "--deid-key-file", help="File holding the de-identification key"),
    create: bool = typer.Option(False, "--create", help="Make a cohort in an existing non-empty folder"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on standard output"),
) -> None:
    """Ingest DICOM series (2D images, volumes, multi-frame) as de-identified, preprocessed tensors."""
    from biomm.ingest.imaging.dicom import ingest

    with user_errors():
        check_cohort_folder(cohort, create)
        key = resolve_deid_key(deid_key, deid_key_file)
        summary = ingest(sources, cohort, _config(config, set_, no_deid, key), progress=not as_json)
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@ingest_app.command("dicomweb")
def ingest_dicomweb_cmd(
    url: str = typer.Argument(..., help="DICOMweb root, e.g. http://localhost:8042/dicom-web"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    study: List[str] = typer.Option([], "--study", help="StudyInstanceUID to pull (repeatable); default: every study"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML DicomIngestConfig"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    no_deid: bool = typer.Option(False, "--no-deid", help="Data is already de-identified"),
    deid_key: Optional[str] = typer.Option(None, "--deid-key", help="De-identification key (shows in `ps`: prefer --deid-key-file or BIOMM_DEID_KEY)"),
    deid_key_file: Optional[Path] = typer.Option(None, "--deid-key-file", help="File holding the de-identification key"),
    create: bool = typer.Option(False, "--create", help="Make a cohort in an existing non-empty folder"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on standard output"),
) -> None:
    """Pull studies from a PACS (QIDO-RS + WADO-RS) through the DICOM series pipeline."""
    import requests

    from biomm.ingest.imaging.dicomweb import ingest

    with user_errors():
        check_cohort_folder(cohort, create)
        key = resolve_deid_key(deid_key, deid_key_file)
        try:
            summary = ingest([url], cohort, _config(config, set_, no_deid, key, study), progress=not as_json)
        except requests.RequestException as exc:
            raise ValueError(f"DICOMweb request to {url} failed: {exc}") from None
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@bench_app.command("ingest-dicom")
def bench_ingest_dicom(
    repeats: int = typer.Option(3, help="Timed repetitions (best is reported)"),
    workers: int = typer.Option(0, help="Decoding processes for biomm (0 = one per core)"),
    copies: int = typer.Option(1, min=1, help="Copies of the 13 series (new UIDs each): 10 gives 130 series"),
) -> None:
    """Series/s from DICOM files to a cached preprocessed tensor: biomm vs MONAI PydicomReader and SimpleITK."""
    from biomm.bench.ingest_dicom import bench

    print(json.dumps(bench(repeats=repeats, workers=workers, copies=copies)))


@step("ingest_dicom")
def ingest_dicom_step(ctx: PipelineContext, sources: list[str], cohort: str, config: dict | str | None = None) -> dict:
    """Pipeline step: `with: {sources: [...], cohort: ..., config: {...} or path}`."""
    from biomm.ingest.imaging.dicom import ingest

    cfg = str(ctx.path(config)) if isinstance(config, str) else config
    summary = ingest([ctx.path(s) for s in sources], ctx.path(cohort), cfg)
    print_summary(summary, as_json=False)
    return summary.model_dump()


@step("make_linked_xrays")
def make_linked_xrays_step(ctx: PipelineContext, synthea: str = "biomm/resources/data/synthea",
                           npz: str = "biomm/resources/data/pneumoniamnist.npz", out: str = "{workdir}/xrays",
                           seed: int = 0) -> dict:
    """Pipeline step: DICOM chest X-rays for the Synthea thoracic ImagingStudies (see biomm.ingest.demo.xrays)."""
    from biomm.ingest.demo.xrays import make_linked_xrays

    return make_linked_xrays(ctx.path(synthea), ctx.path(npz), ctx.path(out), seed)
