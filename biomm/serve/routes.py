"""The routes. Readers query and browse; writers also ingest. Subjects are the cohort's pseudonymous ids."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from biomm.schema import QueryError, QueryRequest, QueryResponse
import biomm.store.views as cohort_view
from biomm.serve.api_models import (CohortInfo, Health, ImageInfo, ModelInfo, SubjectDetail, SubjectList,
                                    Timeline)
from biomm.serve.auth import require
from biomm.serve.ingest import IngestReport, UploadError, ingest_uploads
from biomm.serve.state import ServeState

router = APIRouter()
STATIC = Path(__file__).parent / "static"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
SubjectId = Annotated[str, PathParam(pattern=ID_PATTERN, description="Pseudonymous subject id")]
Reader = Depends(require("reader"))
Writer = Depends(require("writer"))
AUTH_RESPONSES = {400: {"description": "Unreadable body"}, 401: {"description": "Missing or wrong token"}, 403: {"description": "Role too weak"},
                  413: {"description": "Body over the limit"}, 422: {"description": "Invalid request (reason given)"}}


def _state(request: Request) -> ServeState:
    return request.app.state.serve


def _not_found(exc: cohort_view.NotFound) -> HTTPException:
    return HTTPException(404, detail=str(exc.args[0]))


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The clinician web page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/health", response_model=Health, tags=["meta"])
def health() -> Health:
    """Liveness; the only route without a token."""
    return Health(status="ok")


@router.get("/model", response_model=ModelInfo, tags=["query"], responses=AUTH_RESPONSES, dependencies=[Reader])
def model_info(request: Request) -> ModelInfo:
    """The served model: its name, its clinical tasks, the query kinds, and how many subjects the cohort holds."""
    state = _state(request)
    engine = state.engine
    with state.reader() as con:
        n = cohort_view.subject_count(con)
    return ModelInfo(model=engine.model_name, tasks=list(engine.tasks), kinds=list(engine.handlers), subjects=n)


@router.post("/query", response_model=QueryResponse, tags=["query"], responses=AUTH_RESPONSES, dependencies=[Reader])
def query(body: QueryRequest, request: Request) -> QueryResponse:
    """Every kind `biomm query` answers (task, ask, similar, annotate, perturb), with its evidence.
    A question the model cannot answer as asked (unknown subject, task or gene; wrong model kind) is a 422."""
    state = _state(request)
    engine = state.engine
    try:
        with state.swap.read():  # queries share the engine's read lock: a similarity lookup never waits on inference
            return engine.query(body)
    except QueryError as exc:
        raise HTTPException(422, detail=str(exc)) from None


@router.get("/cohort", response_model=CohortInfo, tags=["cohort"], responses=AUTH_RESPONSES, dependencies=[Reader])
def cohort_info(request: Request) -> CohortInfo:
    """What the cohort holds (subjects and records per modality, splits, EHR span, quarantine)."""
    from biomm.store.cohort import Cohort
    from biomm.store.summary import cohort_summary

    state = _state(request)
    with state.swap.read():
        with Cohort(state.cohort_dir, create=False, read_only=True) as c:
            summary = cohort_summary(c)
    summary.pop("cohort", None)  # a server path, not the client's business
    return CohortInfo(summary=json.loads(json.dumps(summary, default=str)))


@router.get("/subjects", response_model=SubjectList, tags=["cohort"], responses=AUTH_RESPONSES, dependencies=[Reader])
def subjects(request: Request, q: Annotated[str | None, Query(max_length=64, description="Part of a subject id")] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 200, offset: Annotated[int, Query(ge=0, le=10**9)] = 0):
    """The cohort's subjects (paged, optionally filtered by part of the id) with their modalities."""
    with _state(request).reader() as con:
        return cohort_view.list_subjects(con, q, limit, offset, _state(request).cohort_dir)


@router.get("/subjects/{subject_id}", response_model=SubjectDetail, tags=["cohort"],
            responses={**AUTH_RESPONSES, 404: {"description": "Unknown subject"}}, dependencies=[Reader])
def subject(request: Request, subject_id: SubjectId):
    """One subject: kind, split, records per modality, labels and the span of its events."""
    state = _state(request)
    with state.reader() as con:
        try:
            return cohort_view.subject_detail(con, state.cohort_dir, subject_id)
        except cohort_view.NotFound as exc:
            raise _not_found(exc) from None


@router.get("/subjects/{subject_id}/timeline", response_model=Timeline, tags=["cohort"],
            responses={**AUTH_RESPONSES, 404: {"description": "Unknown subject"}}, dependencies=[Reader])
def subject_timeline(request: Request, subject_id: SubjectId,
                     limit: Annotated[int, Query(ge=1, le=5000)] = 500, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                     code: Annotated[str | None, Query(max_length=64, description="Code prefix, e.g. LOINC/")] = None,
                     kind: Annotated[Literal["encounters", "conditions", "medications", "labs", "images", "demographics"]
                                     | None, Query(description="Only events of this kind")] = None,
                     order: Annotated[Literal["asc", "desc"], Query(description="asc: oldest first; desc: newest first")] = "asc"):
    """The subject's events in time order (paged), event times per code system, and its (scrubbed) notes."""
    state = _state(request)
    with state.reader() as con:
        try:
            return cohort_view.timeline(con, state.cohort_dir, subject_id, limit, offset, code, kind,
                                        newest_first=order == "desc")
        except cohort_view.NotFound as exc:
            raise _not_found(exc) from None


@router.get("/subjects/{subject_id}/images", response_model=list[ImageInfo], tags=["cohort"],
            responses={**AUTH_RESPONSES, 404: {"description": "Unknown subject"}}, dependencies=[Reader])
def subject_images(request: Request, subject_id: SubjectId):
    """The subject's imaging records and the display presets of each."""
    with _state(request).reader() as con:
        try:
            records = cohort_view.images(con, subject_id)
        except cohort_view.NotFound as exc:
            raise _not_found(exc) from None
    from biomm.serve.render import presets_for

    return [{**{k: v for k, v in r.items() if k != "provenance"}, "presets": presets_for(r["provenance"])} for r in records]


@router.get("/images/{record_id}.png", tags=["cohort"], response_class=Response, dependencies=[Reader],
            responses={**AUTH_RESPONSES, 200: {"content": {"image/png": {}}, "description": "The rendered image"},
                       404: {"description": "Unknown image"}})
def image_png(request: Request, record_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
              preset: Annotated[str, Query(max_length=32, description="Window (CT in HU) or contrast preset")] = "default",
              slice: Annotated[int | None, Query(ge=0, le=100_000, description="Slice of a volume (default: middle)")] = None):
    """Channel 0 of a cached image as PNG, with a window preset (CT cached in HU) or a contrast preset."""
    from biomm.store.image_cache import load_cached
    from biomm.serve.render import presets_for, render_png

    state = _state(request)
    with state.reader() as con:
        try:
            path, prov = cohort_view.image_record(con, record_id)
        except cohort_view.NotFound as exc:
            raise _not_found(exc) from None
        if preset == "default" and "default" not in presets_for(prov):
            preset = presets_for(prov)[0]
        image = load_cached(state.cohort_dir / path)["image"]
    try:
        png = render_png(image, prov, preset, slice)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return Response(png, media_type="image/png")  # `cache-control: no-store` (SecurityHeaders): patient data


INGEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "One FHIR R4 Bundle",
                                    "properties": {"resourceType": {"const": "Bundle"}}, "required": ["resourceType"]}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "FHIR Bundles (.json) and/or DICOM Part 10 instances"}}}}}}}


@router.post("/ingest", response_model=IngestReport, tags=["ingest"], dependencies=[Writer], openapi_extra=INGEST_BODY,
             responses={**AUTH_RESPONSES, 409: {"description": "The cohort cannot take this ingest"},
                        415: {"description": "Neither a FHIR Bundle nor DICOM"}})
async def ingest(request: Request) -> IngestReport:
    """FHIR Bundles (a JSON body, or multipart files) and DICOM instances (multipart) into the cohort, with the
    CLI's validation, de-identification (the cohort's key) and quarantine. All or nothing: on failure the cohort
    is unchanged. New subjects are queryable as soon as this returns."""
    from biomm.store.cohort import CohortError

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        uploads = [await request.body()]
    elif ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=_state(request).config.max_ingest_files + 1, max_fields=10)
        except Exception as exc:  # malformed multipart: the parser's reason
            raise HTTPException(400, detail=f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        uploads = [await f.read() for f in form.getlist("files") if hasattr(f, "read")]
        await form.close()
    else:
        raise HTTPException(415, detail="send application/json (one FHIR Bundle) or multipart/form-data (field 'files')")
    try:
        return await run_in_threadpool(ingest_uploads, _state(request), uploads)
    except UploadError as exc:
        raise HTTPException(exc.status, detail=str(exc)) from None
    except CohortError as exc:
        raise HTTPException(409, detail=str(exc)) from None
