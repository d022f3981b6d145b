"""`biomm embed`, `biomm query`, `biomm eval`, and their pipeline steps."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app
from biomm.commands.common import console, dump_json, out, user_errors
from biomm.pipeline import PipelineContext, step

# the shipped task names, for --help (a folder listing: no task module is imported to show help)
_TASK_NAMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "resources" / "tasks").glob("*.yaml"))


@app.command("embed")
def embed_cmd(
    model: Path = typer.Argument(..., help="Exported model folder"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    as_json: bool = typer.Option(False, "--json", help="Print what was embedded as one JSON object"),
    full: bool = typer.Option(False, "--full", help="Embed every subject again (default: only new and changed "
                                                    "subjects when the saved embeddings come from the same model)"),
) -> None:
    """Embed every subject (fused and per modality), write them to the store, build the index."""
    from biomm.query.embed import embed_cohort

    with user_errors():
        info = embed_cohort(model, cohort, incremental=not full)
    if as_json:
        dump_json(info)
    else:
        console.print(f"embedded {info['embedded']} of {info['subjects']} subjects ({info['reused']} unchanged, kept) "
                      f"-> {info['embeddings']}; index ({info['backend']}) -> {info['index']}")


def _print_response(resp) -> None:
    if resp.kind == "ask" and resp.details.get("question"):
        out.print(f"Q: {resp.details['question']}", soft_wrap=True)
        out.print(f"[bold]A: {resp.answer}[/]", soft_wrap=True)
    else:
        out.print(f"[bold]{resp.answer}[/]", soft_wrap=True)
    if resp.warnings:
        for w in resp.warnings:
            out.print(f"[yellow]warning:[/] {w}")
    ev = resp.evidence
    if ev is None:
        return
    if ev.modalities:
        out.print("modalities: " + ", ".join(
            f"{m.modality}{'' if m.present else ' (absent)'}"
            + (f" {m.attribution:+.3f}" if m.attribution is not None else "") for m in ev.modalities), soft_wrap=True)
    for e in ev.top_events[:8]:
        out.print(f"  {e.time[:10]}  {e.code}  {e.description or ''}", soft_wrap=True)
    if ev.image_series:
        out.print(f"image series: {', '.join(ev.image_series)}", soft_wrap=True)
    if ev.similar_subjects:
        out.print("similar: " + ", ".join(f"{n.subject_id} ({n.score:.2f}{', ' + n.label if n.label else ''})"
                                         for n in ev.similar_subjects), soft_wrap=True)


@app.command("query")
def query_cmd(
    model: Path = typer.Argument(..., help="Exported model folder"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    subject: Optional[str] = typer.Option(None, "--subject", help="Subject id (pseudonymous)"),
    task: Optional[str] = typer.Option(None, "--task", help=f"Prediction task name: {', '.join(_TASK_NAMES) or '-'}, or one of --tasks"),
    ask: Optional[str] = typer.Option(None, "--ask", help="A question about the subject"),
    similar: Optional[str] = typer.Option(None, "--similar", help="Find subjects similar to this one"),
    k: int = typer.Option(10, "--k", min=1, help="How many similar subjects (with --similar)"),
    by: Optional[str] = typer.Option(None, "--by", help="Similarity by this modality's embedding (default: fused)"),
    cells: Optional[Path] = typer.Option(None, "--cells", help=".h5ad of cells to annotate"),
    sequences: Optional[Path] = typer.Option(None, "--sequences", help="FASTA of sequences to annotate (sequence models)"),
    annotate: bool = typer.Option(False, "--annotate", help="Annotate cell types (the cohort's cells, or --cells)"),
    perturb: Optional[str] = typer.Option(None, "--perturb", help="Predict the response to knocking this gene down"),
    tasks_dir: List[Path] = typer.Option([], "--tasks", help="Extra folder(s) of task YAML files"),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON (schemas/query_response.schema.json)"),
) -> None:
    """Ask the model: a task for a subject, a question, similar subjects, cell annotation or perturbation."""
    from biomm.query.engine import QueryEngine
    from biomm.schema import QueryError, QueryRequest

    if task:
        req = dict(kind="task", subject=subject, task=task)
    elif ask:
        req = dict(kind="ask", subject=subject, question=ask)
    elif similar:
        req = dict(kind="similar", subject=similar, k=k, modality=by)
    elif annotate or cells or sequences:
        req = dict(kind="annotate", cells=str(cells) if cells else None, sequences=str(sequences) if sequences else None)
    elif perturb:
        req = dict(kind="perturb", gene=perturb)
    else:
        console.print("[red]error:[/] say what to ask: --task, --ask, --similar, --annotate or --perturb")
        raise typer.Exit(2)
    with user_errors():
        try:
            request = QueryRequest(**req)
            resp = QueryEngine(model, cohort, task_dirs=tasks_dir).query(request)
        except QueryError as exc:
            console.print(f"[red]cannot answer:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
    if as_json:
        print(resp.model_dump_json(indent=2))
    else:
        _print_response(resp)


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="Exported model folder"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder"),
    task: List[str] = typer.Option([], "--task", help="Only these tasks (clinical); default: all"),
    tasks_dir: List[Path] = typer.Option([], "--tasks", help="Extra folder(s) of task YAML files"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: MODEL/eval)"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object"),
    quick: bool = typer.Option(False, "--quick", help="Clinical: one repeat, k = 1/4/16, two draws (smoke runs); "
                                                     "default: 5 folds x 3 seeds, k = 1..64, five draws"),
) -> None:
    """Metrics against honest baselines, saved as JSON with a Markdown report and PNG plots."""
    from biomm.eval.run import run_eval

    with user_errors():
        protocol = None
        if quick:
            from biomm.eval.clinical import QUICK

            protocol = QUICK
        report, path = run_eval(model, cohort, out_dir, task, tasks_dir, protocol)
    if as_json:
        dump_json(report)
    else:
        console.print(f"report: {path}")


@step("embed")
def embed_step(ctx: PipelineContext, model: str, cohort: str) -> dict:
    """Pipeline step: `biomm embed`."""
    from biomm.query.embed import embed_cohort

    return embed_cohort(ctx.path(model), ctx.path(cohort))


@step("eval")
def eval_step(ctx: PipelineContext, model: str, cohort: str, out: str | None = None, tasks: list[str] | None = None,
              quick: bool = False) -> dict:
    """Pipeline step: `biomm eval` (`quick`: the cheaper clinical protocol); returns the report path."""
    from biomm.eval.run import run_eval

    protocol = None
    if quick:
        from biomm.eval.clinical import QUICK

        protocol = QUICK
    report, path = run_eval(ctx.path(model), ctx.path(cohort), ctx.path(out) if out else None, tasks or [], [], protocol)
    console.print(f"report: {path}")
    return {"report": str(path)}


@step("query")
def query_step(ctx: PipelineContext, model: str, cohort: str, queries: list[dict]) -> dict:
    """Answer each query (QueryRequest fields); `subject: "@first"` takes a subject with every modality,
    `gene: "@simulated"` a gene perturbed by this pipeline's simulate_perturbation step."""
    from biomm.query.engine import QueryEngine
    from biomm.schema import QueryRequest

    engine = QueryEngine(ctx.path(model), ctx.path(cohort))
    answers = []
    for q in queries:
        q = dict(q)
        if q.get("subject") == "@first":
            q["subject"] = engine.richest_subject()
        if q.get("gene") == "@simulated":  # a gene knocked down in this pipeline's simulation (seen in training)
            q["gene"] = ctx.results["simulate_perturbation"]["targets"][-1]
        if q.get("sequences"):  # a FASTA to annotate: relative to the project, `{workdir}` expanded
            q["sequences"] = str(ctx.path(q["sequences"]))
        resp = engine.query(QueryRequest(**q))
        out.rule(f"query: {q.get('kind')}")
        _print_response(resp)
        answers.append(resp.model_dump())
    return {"answers": answers}
