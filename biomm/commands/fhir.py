"""`biomm ingest fhir` and the `ingest_fhir` pipeline step."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import ingest_app
from biomm.commands.common import check_cohort_folder, deid_key as resolve_deid_key, print_summary, user_errors
from biomm.config import load_config
from biomm.ingest.ehr.config import FhirIngestConfig
from biomm.pipeline import PipelineContext, step


@ingest_app.command("fhir")
def ingest_fhir_cmd(
    sources: List[Path] = typer.Argument(..., help="FHIR R4 Bundles (.json/.json.gz), bulk NDJSON (.ndjson/.ndjson.gz), or folders"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder (created when missing)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML FhirIngestConfig"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    strict: bool = typer.Option(False, "--strict", help="Validate every resource with fhir.resources.R4B"),
    no_deid: bool = typer.Option(False, "--no-deid", help="Data is already de-identified: keep ids and dates (recorded in the manifest)"),
    deid_key: Optional[str] = typer.Option(None, "--deid-key", help="De-identification key (shows in `ps`: prefer --deid-key-file or BIOMM_DEID_KEY; default: the cohort's key file)"),
    deid_key_file: Optional[Path] = typer.Option(None, "--deid-key-file", help="File holding the de-identification key"),
    create: bool = typer.Option(False, "--create", help="Make a cohort in an existing non-empty folder"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on standard output"),
) -> None:
    """Ingest FHIR R4 into a cohort as de-identified MEDS events; bad input goes to quarantine."""
    from biomm.ingest.ehr.fhir import ingest

    with user_errors():
        check_cohort_folder(cohort, create)
        key = resolve_deid_key(deid_key, deid_key_file)
        cfg = load_config(FhirIngestConfig, config, set_)
        if strict:
            cfg.strict = True
        if no_deid:
            cfg.deid.enabled = False
        if key:
            cfg.deid.key = key
        summary = ingest(sources, cohort, cfg, progress=not as_json)
    print_summary(summary, as_json)
    raise typer.Exit(summary.exit_code)


@step("ingest_fhir")
def ingest_fhir_step(ctx: PipelineContext, sources: list[str], cohort: str, config: dict | None = None) -> dict:
    """Pipeline step: `with: {sources: [...], cohort: DIR, config: {...}}`."""
    from biomm.ingest.ehr.fhir import ingest

    summary = ingest([ctx.path(s) for s in sources], ctx.path(cohort), load_config(FhirIngestConfig, config or {}))
    print_summary(summary, as_json=False)
    return summary.model_dump()
