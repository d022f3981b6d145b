"""The FastAPI app: `create_app(model_dir, cohort_dir, tokens)`. Routes live in routes.py; this module wires
auth, limits, error handlers, CORS (off unless origins are configured) and the static page."""
from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomm.serve.auth import Authenticator
from biomm.serve.limits import BodyLimit
from biomm.serve.settings import ServeConfig
from biomm.serve.state import ServeState

log = logging.getLogger("biomm.serve")
STATIC = Path(__file__).parent / "static"
VERSION = "1"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and why, without echoing the submitted values back."""
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return JSONResponse({"detail": "internal error"}, status_code=500)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
]


class SecurityHeaders:
    """Headers on every response: nothing loads from another origin, nothing is framed or sniffed, and
    API answers and images (patient data) are not cached by the browser."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cacheable = scope["path"].startswith("/static/") or scope["path"] == "/"  # images are patient data

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_headers)


class AccessLog:
    """One `biomm.serve` log line per request: method, path, status and milliseconds. Never the query
    string (searches and questions may name a patient) nor headers (tokens); replaces uvicorn's access log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import time

        t0, status = time.perf_counter(), [500]

        async def record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            return await self.app(scope, receive, record)
        finally:
            log.info("%s %s %d %.1f ms", scope.get("method", "-"), scope["path"], status[0],
                     (time.perf_counter() - t0) * 1000)


def build_app(config: ServeConfig | None = None) -> FastAPI:
    """The routes, limits, handlers and page, without a model or a cohort (enough for the OpenAPI spec)."""
    from biomm.serve.routes import router

    config = config or ServeConfig()
    # no /docs: Swagger UI loads from a CDN that the page's CSP blocks; the spec is /openapi.json
    app = FastAPI(title="biomm", version=VERSION, docs_url=None, redoc_url=None,
                  description="Query a biomm model over a cohort; ingest FHIR and DICOM. "
                              "Every route but /health and the page needs `Authorization: Bearer <token>`.")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit_for=lambda path: config.max_ingest_bytes if path == "/ingest"
                       else config.max_query_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AccessLog)
    return app


def create_app(model_dir: str | Path, cohort_dir: str | Path, tokens: dict[str, str],
               config: ServeConfig | None = None, engine=None) -> FastAPI:
    """The app for one model and one cohort. `tokens` maps token -> role (see biomm.serve.auth.load_tokens);
    `engine` is an already loaded QueryEngine to share (else loaded on first use)."""
    config = config or ServeConfig()
    if not tokens:
        raise ValueError("no tokens: the API refuses to run without at least one token")
    app = build_app(config)
    app.state.serve = ServeState(Path(model_dir), Path(cohort_dir), config, engine)
    app.state.auth = Authenticator(tokens)
    return app


def openapi_spec() -> dict:
    """The API's OpenAPI document (checked in as schemas/openapi.json)."""
    return build_app().openapi()


def write_openapi(path: str | Path) -> Path:
    """Write the OpenAPI document to `path` (sorted JSON); returns the path."""
    import json

    path = Path(path)
    path.write_text(json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n")
    return path

