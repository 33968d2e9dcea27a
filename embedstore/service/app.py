"""The REST service: `create_app(store)` builds the FastAPI app, `serve` runs it under uvicorn.

Routes parse, hand one library call to the worker pool (see state.py) and format; search is the
very function behind `embedstore search`, and similarity answers through index/similar.py as
`embedstore similar` does (ids: similar_ids; uploads: similar_videos), so the CLI and the API answer alike. Every error is JSON `{"error": {"code", "message"}}` with the status of
the library's EmbedstoreError; validation errors are 422; anything unexpected is a 500 whose body
says nothing about the server (the traceback goes to the server log only). Absolute paths are
scrubbed from every message, since library messages name the files they read.
"""
from __future__ import annotations

import os
import re
import secrets
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException

import embedstore
from embedstore import config
from embedstore.errors import BadInput, EmbedstoreError
from embedstore.service.schemas import (
    BatchSearchRequest, BatchSearchResponse, Encoders, ErrorResponse, Health, PredictRequest, SearchOptions, SearchRequest,
    SearchResponse, SimilarityRequest,
    SimilarityResponse, UploadSimilarityForm, VideoRecord, View,
)
from embedstore.service.settings import Settings
from embedstore.service.state import ServiceState, Unauthorized
from embedstore.store import open_store

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "bad input (vector, filter, k over the limit, multipart body)", 401: "missing or wrong bearer token",
        404: "unknown id, encoder, index or view", 409: "the store forbids it (stale index, other weights)",
        413: "upload or body over the limit", 415: "not a readable AVI, MP4 or DICOM video",
        422: "request does not match the schema", 500: "internal error (details in the server log only)",
        503: "busy or timed out; see Retry-After"}.items()}
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
PATH = re.compile(r"(?<![\w.>/:])/[\w.\-~+@%=]+(?:/[\w.\-~+@%=]+)*/?")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
UPLOAD_ROUTES = frozenset({"/search/video", "/similarity/videos"})  # they stream and limit their bodies themselves
STATIC = Path(__file__).parent / "static"  # the browser page; open like /health, so it can ask for the token


def create_app(store_path: str | Path | None = None, settings: Settings | None = None) -> FastAPI:
    """The app over the store at `store_path` (default $EMBEDSTORE_HOME); the store opens, read-only, at startup."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """Open the store and load its indexes for one server run."""
        app.state.service = ServiceState(store_path, settings)
        try:
            yield
        finally:
            app.state.service.close()

    app = FastAPI(title="embedstore", version=embedstore.__version__, lifespan=lifespan,
                  description="Embedding search over echocardiogram videos. Limits and errors: see each route.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, streamed=UPLOAD_ROUTES)
    app.add_exception_handler(EmbedstoreError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_api_route("/health", health, methods=["GET"], response_model=Health, responses={500: ERRORS[500]})
    add_api_routes(app, settings)
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def get_state(request: Request) -> ServiceState:
    """Async, so FastAPI does not hop to a thread to run it."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


# -- routes -------------------------------------------------------------------------------------
async def health(request: Request, state: State) -> Response:
    """Liveness ("ok") for anyone; version, counts, encoders and loaded indexes too when no token is set or
    the caller sends it (read here, not declared: the route itself is open)."""
    token = request.app.state.settings.api_token
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    authorized = not token or (scheme.lower() == "bearer" and secrets.compare_digest(sent.strip().encode(), token.encode()))
    return json_response(state.health(authorized))


async def page() -> FileResponse:
    """The browser page (static/index.html); it calls the public routes below like any client."""
    return FileResponse(STATIC / "index.html")


async def encoders(state: State) -> Encoders:
    """The encoders with vectors in this store, their provenance and which targets are searchable."""
    return Encoders(**state.encoders())


async def video(video_id: str, state: State) -> VideoRecord:
    """A video's catalog row and the encoders that have a vector for it."""
    return VideoRecord(**await state.call(state.video, video_id))


async def thumbnail(video_id: str, state: State, animated: bool = False) -> Response:
    """PNG of the middle frame, or with animated=true a looping GIF of the clip (for result pages)."""
    data = await state.call(state.thumbnail, video_id, animated, lane="media")
    return Response(data, media_type="image/gif" if animated else "image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


async def search(body: SearchRequest, state: State) -> Response:
    """Neighbours of a stored video, a vector, a text or a report (exactly one), as `embedstore search`."""
    return json_response(SearchResponse.body(await state.search_request(body)))


async def search_batch(body: BatchSearchRequest, state: State) -> Response:
    """Many searches by stored ids or vectors with the same options, in one index call (at most max_batch)."""
    return json_response(await state.call(state.search_batch, body))


async def search_video(request: Request, state: State) -> Response:
    """Neighbours of an uploaded AVI, MP4 or DICOM video (multipart: `file` plus the search fields)."""
    async with state.pool.slot(), state.uploads(request, ("file",)) as (fields, files):
        options = parse_form(SearchOptions, fields)
        return json_response(SearchResponse.body(await state.pool.run("media", state.search_upload, options, files["file"])))


async def similarity(body: SimilarityRequest, state: State) -> SimilarityResponse:
    """Cosine of two stored videos and the same-patient probability calibrated on the store, as `embedstore similar`."""
    return SimilarityResponse(**await state.call(state.similar_ids, body))


async def similarity_videos(request: Request, state: State) -> SimilarityResponse:
    """The same for two uploaded videos (multipart: files `a` and `b`, field `encoder`)."""
    async with state.pool.slot(), state.uploads(request, ("a", "b")) as (fields, files):
        form = parse_form(UploadSimilarityForm, fields)
        return SimilarityResponse(**await state.pool.run("media", state.similar_uploads, form.encoder, files["a"], files["b"]))


async def audit(state: State, encoder: str, threshold: float | None = None, k: int = 10) -> Response:
    """`embedstore audit`: duplicates, near-duplicates, patients and studies across splits, a suggested re-split
    (its counts); the threshold is chosen from the data unless given. Computed once per arguments."""
    return json_response(await state.call(state.audit, encoder, threshold, k, lane="media"))


async def predict(body: PredictRequest, state: State) -> dict:
    """Labels of a stored study from its nearest studies (nan-mean, neighbours, interval), as `embedstore predict`."""
    return await state.call(state.predict, body)


async def view(encoder: str, state: State, method: Literal["umap", "pca"] = "umap") -> View:
    """2-D coordinates of an encoder's videos with ids and labels, when the view has been computed."""
    return View(**await state.call(state.view, encoder, method))


def add_api_routes(app: FastAPI, settings: Settings) -> None:
    """Every route but /health, behind the bearer token when one is set.

    Added to the app itself, not through an included APIRouter: matching a request against an included
    router's routes cost ~0.1 ms of the event loop's time per request (a fifth of a search's HTTP overhead).
    """
    guard = [Depends(require_token)] if settings.api_token else []

    def route(path: str, endpoint, methods: list[str], responses: dict = ERRORS, **extra) -> None:
        app.add_api_route(path, endpoint, methods=methods, dependencies=guard, responses=responses, **extra)

    route("/encoders", encoders, ["GET"])
    route("/videos/{video_id}", video, ["GET"])
    route("/videos/{video_id}/thumbnail", thumbnail, ["GET"], response_class=Response,
          responses={**ERRORS, 200: {"content": {"image/png": {}, "image/gif": {}}, "description": "the image"}})
    route("/search", search, ["POST"], response_model=SearchResponse)
    route("/search/batch", search_batch, ["POST"], response_model=BatchSearchResponse)
    route("/search/video", search_video, ["POST"], response_model=SearchResponse,
          openapi_extra=multipart_body(SearchOptions, ("file",)))
    route("/similarity", similarity, ["POST"])
    route("/similarity/videos", similarity_videos, ["POST"], openapi_extra=multipart_body(UploadSimilarityForm, ("a", "b")))
    route("/views/{encoder}", view, ["GET"])
    route("/audit", audit, ["GET"])
    route("/predict", predict, ["POST"])



BEARER = HTTPBearer(auto_error=False, description="the server's EMBEDSTORE_API_TOKEN")


async def require_token(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Refuse (401) a request without `Authorization: Bearer <token>`; only routed in when a token is set."""
    expected = (request.app.state.settings.api_token or "").encode()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("missing or wrong bearer token; send 'Authorization: Bearer <token>'")


class BodyLimit:
    """413 for a JSON body over the limit, from its Content-Length before anything is read, else as it streams.

    Not FastAPI's max_body_size: that one answers text/plain whenever Content-Length is over the limit.
    The HTTPException raised inside `receive` reaches the app's handlers, so the 413 is JSON like every error.
    """

    def __init__(self, app, limit: int, streamed: frozenset[str]):
        self.app, self.limit, self.streamed = app, limit, streamed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed:
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        counted = not declared.isdigit()  # chunked: count as it comes (the server holds a declared length to its word)
        seen = 0 if counted else int(declared)

        async def limited():
            nonlocal seen
            if seen <= self.limit:
                message = await receive()
                seen += len(message.get("body", b"")) if counted else 0
                if seen <= self.limit:
                    return message
            raise HTTPException(413, f"the request body is over this service's limit of {self.limit} bytes")

        await self.app(scope, limited, send)


def json_response(body: dict) -> Response:
    """JSON serialised straight from the library's dict (pydantic-core, NaN as null), not through the route's
    response model: validating and re-dumping a search result cost more than the search at 10k vectors.
    The response model still documents the shape, and the schema tests hold every answer to it."""
    return Response(to_json(body, inf_nan_mode="null"), media_type="application/json")


# -- multipart forms ----------------------------------------------------------------------------
def parse_form(model: type[BaseModel], fields: dict[str, str]):
    """Form fields through the same pydantic model as JSON, with the same 422 on a bad one."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def multipart_body(model: type[BaseModel], files: tuple[str, ...]) -> dict:
    """OpenAPI of a multipart body that the route streams itself (FastAPI would buffer it before the route runs)."""
    schema = model.model_json_schema()
    properties: dict[str, Any] = {name: {"type": "string", "format": "binary"} for name in files}
    for name, prop in schema["properties"].items():
        branch = next((b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"), prop)
        properties[name] = {**{k: v for k, v in prop.items() if k in ("description", "default") and v is not None},
                            **{k: v for k, v in branch.items() if k != "title"}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": [*files, *schema.get("required", [])],
        "additionalProperties": False}}}}}


# -- errors -------------------------------------------------------------------------------------
def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": PATH.sub("<path>", message)}}, status_code=status,
                        headers=headers)


async def on_library_error(request: Request, exc: EmbedstoreError) -> JSONResponse:
    headers = {"Retry-After": str(request.app.state.settings.retry_after_s)} if exc.status == 503 else (
        {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
    return error(exc.status, exc.code, exc.message, headers)


async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return error(422, "invalid_request", "; ".join(problems[:3]) + more)


async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = HTTP_CODES.get(exc.status_code) or HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return error(exc.status_code, code, str(exc.detail), exc.headers)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error(500, "internal_error", "internal server error; the server log has the details")


# -- running it ---------------------------------------------------------------------------------
def serve(store: Path | None, host: str | None, port: int, workers: int, log_level: str = "info") -> None:
    """`embedstore serve`: uvicorn; each worker process builds its own app with create_app() from the environment."""
    import uvicorn

    settings = Settings.from_env(host=host)  # a bad EMBEDSTORE_* value fails here, as a one-line CLI error
    if log_level not in LOG_LEVELS:
        raise BadInput(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    path = Path(store) if store is not None else config.home()
    open_store(path, read_only=True).close()
    os.environ["EMBEDSTORE_HOME"] = str(path.resolve())
    uvicorn.run(f"{__name__}:create_app", factory=True, host=settings.host, port=port, workers=workers,
                log_level=log_level, server_header=False)
