"""`biomm qa train|eval|ask`: the clinical question-answering head, and the `train_qa` pipeline step."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app
from biomm.commands.common import console, dump_json, user_errors
from biomm.pipeline import PipelineContext, step

qa_app = typer.Typer(help="Question answering about patients: fused latents -> a causal LM (LLaVA stage 2).",
                     no_args_is_help=True)
app.add_typer(qa_app, name="qa")


def _config(config: Path | None, overrides: list[str]):
    from biomm.config import load_config
    from biomm.heads.qa.config import QAConfig

    return load_config(QAConfig, config, overrides)


@qa_app.command("train")
def train_cmd(
    model: Path = typer.Argument(..., help="Exported clinical model folder (`biomm export`)"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    config: Optional[Path] = typer.Option(None, "--config", help="QA config YAML (configs/qa/*.yaml)"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
) -> None:
    """Train the QA head on the training patients; save it in MODEL/heads/qa; print metrics as JSON."""
    from biomm.heads.qa.train import train_qa

    with user_errors():
        metrics = train_qa(model, cohort, _config(config, set_), progress=True)
    dump_json(metrics)


@qa_app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="Model folder with a trained QA head"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    split: str = typer.Option("test", "--split", help="train, val or test"),
    xray_labels: Optional[Path] = typer.Option(None, "--xray-labels", help="Linkage CSV (default: the head's config)"),
) -> None:
    """EM / token F1 per question type on held-out patients and held-out wordings, against the majority and
    retrieval-only baselines, with evidence precision, "not recorded" F1 and answer latency, as JSON."""
    from biomm.heads.qa.evaluate import evaluate_qa

    with user_errors():  # QueryError is a ValueError: one clear line, exit code 2
        dump_json(evaluate_qa(model, cohort, split, str(xray_labels) if xray_labels else None))


@qa_app.command("ask")
def ask_cmd(
    model: Path = typer.Argument(..., help="Model folder with a trained QA head"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    subject: str = typer.Option(..., "--subject", help="Subject id (pseudonymous)"),
    question: str = typer.Option(..., "--question", help="e.g. 'What was the most recent systolic blood pressure?'"),
) -> None:
    """Answer one question about one subject; prints the QueryResponse JSON (answer and evidence)."""
    from biomm.heads.qa.service import answer

    with user_errors():  # QueryError is a ValueError: one clear line, exit code 2
        print(answer(model, cohort, subject, question).model_dump_json(indent=2))


@step("train_qa")
def train_qa_step(ctx: PipelineContext, model: str, cohort: str, config: str | None = None,
                  xray_labels: str | None = None, set: list[str] | None = None) -> dict:
    """Pipeline step: train the QA head of an exported model (xray_labels: e.g. {workdir}/xrays/linkage.csv)."""
    from biomm.heads.qa.train import train_qa

    overrides = list(set or [])
    if xray_labels:
        overrides.append(f"questions.xray_labels={ctx.path(xray_labels)}")
    cfg = _config(ctx.path(config) if config else None, overrides)
    metrics = train_qa(ctx.path(model), ctx.path(cohort), cfg, progress=True)
    for name, ev in ((k, metrics["eval"][k]) for k in ("held_out_patients", "held_out_wordings")):
        console.print(f"QA {name}: EM {ev['model']['overall']['em']:.3f} (majority {ev['majority']['overall']['em']:.3f}, "
                      f"retrieval {ev['retrieval']['overall']['em']:.3f}), evidence precision "
                      f"{ev['evidence_precision']['precision']:.3f}, not-recorded F1 {ev['not_recorded']['model']['f1']:.3f}")
    return {"model": str(ctx.path(model)), "head": str(ctx.path(model) / "heads" / "qa"), "metrics": metrics}
