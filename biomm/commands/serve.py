"""`biomm serve MODEL --cohort DIR`: the HTTP API and the clinician's page (uvicorn)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from biomm.commands.apps import app, bench_app
from biomm.commands.common import console


@app.command("serve")
def serve_cmd(
    model: Path = typer.Argument(..., help="Exported model folder (biomm export)"),
    cohort: Path = typer.Option(..., "--cohort", help="Cohort folder to query and ingest into"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="YAML/JSON file: token -> role (reader|writer); "
                                          "or set BIOMM_TOKENS=\"tok1:reader,tok2:writer\""),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve config YAML (limits, CORS origins, ingest configs)"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key=value"),
    log_level: str = typer.Option("info", "--log-level", help="Log level of the server (debug, info, warning, error)"),
    ssl_certfile: Optional[Path] = typer.Option(None, "--ssl-certfile", help="TLS certificate (PEM) for HTTPS"),
    ssl_keyfile: Optional[Path] = typer.Option(None, "--ssl-keyfile", help="TLS private key (PEM) for HTTPS"),
) -> None:
    """Serve queries, ingest and the web page at http://HOST:PORT/ (bearer tokens; CORS off by default)."""
    import logging

    import uvicorn

    from biomm.config import ConfigError, load_config
    from biomm.serve.app import create_app
    from biomm.serve.auth import TokenConfigError, load_tokens
    from biomm.serve.settings import ServeConfig

    try:
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise ValueError("give --ssl-certfile and --ssl-keyfile together")
        for tls_file in (ssl_certfile, ssl_keyfile):
            if tls_file is not None and not tls_file.is_file():
                raise FileNotFoundError(f"TLS file not found: {tls_file}")
        cfg = load_config(ServeConfig, config, set_)
        table = load_tokens(tokens)
        application = create_app(model, cohort, table, cfg)
        state = application.state.serve
        console.print(f"loading model {state.model_dir.name} over cohort {state.cohort_dir.name} ...")
        engine = state.engine
    except (ConfigError, TokenConfigError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    roles = sorted(set(table.values()))
    console.print(f"model {engine.model_name}: {len(engine.subjects)} subjects, tasks {', '.join(sorted(engine.tasks)) or '-'}; "
                  f"{len(table)} token(s) ({', '.join(roles)})")
    tls = ssl_certfile is not None
    warning = tls_warning(host, tls)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(f"page: {'https' if tls else 'http'}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/")
    logging.getLogger("biomm.serve").setLevel(log_level.upper())
    # uvicorn's access log records query strings (searches may name a patient): biomm.serve.app.AccessLog instead
    uvicorn.run(application, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                access_log=False, ssl_certfile=str(ssl_certfile) if tls else None,
                ssl_keyfile=str(ssl_keyfile) if tls else None)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def tls_warning(host: str, tls: bool) -> str | None:
    """The warning for listening beyond loopback without TLS (tokens and patient data in clear), else None."""
    if host in LOOPBACK or tls:
        return None
    return (f"listening on {host} without TLS: tokens and patient data cross the network in clear; "
            "give --ssl-certfile/--ssl-keyfile or put a TLS-terminating proxy in front")


@bench_app.command("serve")
def bench_serve_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Exported model (default: build the demo model and cohort)"),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Cohort folder (with --model)"),
    seconds: float = typer.Option(30, "--seconds", min=1, max=300, help="Load duration (bounded)"),
    clients: int = typer.Option(16, "--clients", min=1, max=64, help="Concurrent clients"),
    index_size: int = typer.Option(100_000, "--index-size", min=1000, max=1_000_000, help="Subjects in the index comparison"),
    server_threads: int = typer.Option(1, "--server-threads", min=1, help="OMP threads of the server process"),
) -> None:
    """Load test of `biomm serve` on loopback (task/question/similarity mix; p50/p95/p99, throughput, errors)
    and the faiss index against an exact numpy scan at 100,000 subjects. Prints one JSON object."""
    from biomm.bench.serve import run
    from biomm.commands.common import dump_json, user_errors

    if (model is None) != (cohort is None):
        console.print("[red]error:[/] give both --model and --cohort, or neither (the demo is built)")
        raise typer.Exit(2)
    with user_errors():
        dump_json(run(model, cohort, seconds, clients, index_size, server_threads))
