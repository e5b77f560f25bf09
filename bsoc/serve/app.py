"""The FastAPI application: the routes and the HTTP edge of the service.

``create_app(estimator, ServeConfig(...), model_info)`` builds a self-contained app around
one :class:`~bsoc.serve.service.Service`; the ``bsoc serve`` command runs it under uvicorn,
tests run it on a free loopback port. Routes follow the serving contract
(bsoc/serve/README.md); every refusal is a JSON :class:`~bsoc.serve.schemas.ErrorResponse`
with a kind and a reason, counted in /metrics, its status from
:mod:`bsoc.serve.rejections`. The WebSocket protocol is :mod:`bsoc.serve.socket`. The
routes only talk to a :class:`~bsoc.serve.service.StreamService`, so the fleet's gateway
(:mod:`bsoc.fleet.gateway`) serves the same API in front of its log with :func:`build_app`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Path as PathParam,
    Query,
    Request,
    Security,
    WebSocket,
)
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as FrameworkHTTPException
from starlette.routing import Match
from swagger_ui_bundle import swagger_ui_path

from bsoc import __version__
from bsoc.estimator import SocEstimator
from bsoc.serve.auth import key_matches
from bsoc.serve.errors import Refused
from bsoc.serve.middleware import BodyLimit
from bsoc.serve.rejections import (
    ERRORS,
    FRAMEWORK_ERROR_KINDS,
    TOO_DEEP,
    Rejected,
    error_details,
    unauthorized,
)
from bsoc.serve.schemas import (
    STREAM_ID_PATTERN,
    Health,
    SampleList,
    SamplesResponse,
    StreamList,
    StreamStatus,
    describe_validation_errors,
)
from bsoc.serve.service import ServeConfig, Service, StreamService
from bsoc.serve.socket import serve_socket

STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = (
    "Streams of cell samples in, state of charge out. Each stream keeps its model "
    "state between requests; requests to one stream are applied one at a time in "
    "arrival order and must carry strictly newer timestamps. Rejected requests "
    "change nothing. Writes (and stream reads) need the API key when one is "
    "configured, as `Authorization: Bearer KEY` or `X-API-Key: KEY`."
)

StreamId = Annotated[str, PathParam(pattern=STREAM_ID_PATTERN, max_length=128)]


def _service(request: Request) -> StreamService:
    return request.app.state.service


ServiceOf = Annotated[StreamService, Depends(_service)]


def require_key(
    request: Request,
    _bearer: Any = Security(HTTPBearer(auto_error=False)),
    _header: Any = Security(APIKeyHeader(name="X-API-Key", auto_error=False)),
) -> None:
    if not key_matches(_service(request).config.api_key, request.headers):
        raise unauthorized()


routes = APIRouter()


@routes.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI spec, entirely from this server (works offline)."""
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


@routes.post(
    "/v1/streams/{stream_id}/samples",
    response_model=SamplesResponse,
    responses=ERRORS,
    dependencies=[Depends(require_key)],
    summary="Send samples of one stream; get one SOC estimate per sample",
)
async def post_samples(stream_id: StreamId, samples: SampleList,
                       service: ServiceOf) -> SamplesResponse:
    estimates = await service.apply(stream_id, samples, "http")
    return SamplesResponse(stream_id=stream_id, estimates=estimates)


@routes.websocket("/v1/streams/{stream_id}")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    """One JSON sample per message -> one estimate; a JSON list -> a list of estimates."""
    await serve_socket(websocket, stream_id, websocket.app.state.service)


@routes.get(
    "/v1/streams",
    response_model=StreamList,
    responses={401: ERRORS[401]},
    dependencies=[Depends(require_key)],
    summary="List streams with their latest SOC",
)
async def list_streams(
    service: ServiceOf,
    prefix: str = Query("", description="Only ids starting with this."),
    limit: int = Query(1000, ge=1, le=100_000),
) -> StreamList:
    return await service.list_streams(prefix, limit)


def _one_stream(summary: str) -> dict[str, Any]:
    """How a route that reads or forgets one stream is declared: key, 404, its status."""
    return {"response_model": StreamStatus, "responses": {401: ERRORS[401], 404: ERRORS[404]},
            "dependencies": [Depends(require_key)], "summary": summary}


@routes.get("/v1/streams/{stream_id}",
            **_one_stream("A stream's latest SOC, counters and (optionally) recent history"))
async def get_stream(
    stream_id: StreamId,
    service: ServiceOf,
    history: int = Query(0, ge=0, le=100_000, description="Recent samples to include."),
) -> StreamStatus:
    return await service.stream_status(stream_id, history)


@routes.delete("/v1/streams/{stream_id}",
               **_one_stream("Forget a stream (its next sample starts it afresh)"))
async def delete_stream(stream_id: StreamId, service: ServiceOf) -> StreamStatus:
    return await service.delete_stream(stream_id)


@routes.get("/healthz", response_model=Health, summary="Liveness and what is served")
async def healthz(service: ServiceOf) -> Health:
    return await service.health()


@routes.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics (text format 0.0.4)",
)
async def metrics(service: ServiceOf) -> PlainTextResponse:
    text = await service.metrics_text()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@routes.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def _rejected(request: Request, error: Rejected | Refused) -> JSONResponse:
    """A refusal of the service or of the edge, with its status (and the auth scheme, 401)."""
    rejected = Rejected.of(error)
    _service(request).metrics.observe_error(rejected.kind)
    headers = {"WWW-Authenticate": "Bearer"} if rejected.status == 401 else None
    return JSONResponse(rejected.body(), status_code=rejected.status, headers=headers)


async def _framework(request: Request, error: FrameworkHTTPException) -> JSONResponse:
    """Unknown paths, wrong methods, unparsable bodies: the same shape, counted alike."""
    kind = FRAMEWORK_ERROR_KINDS.get(error.status_code, f"http_{error.status_code}")
    _service(request).metrics.observe_error(kind)
    headers = dict(error.headers or {})
    if error.status_code == 405:  # the router names one route's methods, not the path's
        headers = {"Allow": ", ".join(_allowed_methods(request))}
    return JSONResponse(
        {"error": kind, "reason": _framework_reason(request, error, headers)},
        status_code=error.status_code,
        headers=headers,
    )


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    _service(request).metrics.observe_error("validation")
    details = error_details(error.errors())
    return JSONResponse(
        {"error": "validation", "reason": describe_validation_errors(details),
         "details": details},
        status_code=422,
    )


def create_app(estimator: SocEstimator, config: ServeConfig, model: dict[str, Any]) -> FastAPI:
    """Build the service for one model. Restores the snapshot now, so errors surface early."""
    return build_app(Service(estimator, config, model))


def build_app(service: StreamService, *, description: str = "") -> FastAPI:
    """The HTTP/WebSocket API in front of ``service`` (``description`` is added to /docs)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="bsoc live SOC service",
        version=__version__,
        description=DESCRIPTION + (f" {description}" if description else ""),
        lifespan=lifespan,
        docs_url=None,  # served by `docs` from vendored assets: FastAPI's page needs a CDN
    )
    app.state.service = service
    app.add_middleware(BodyLimit, limit=service.config.max_body_bytes, metrics=service.metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    for kind in (Rejected, Refused):
        app.add_exception_handler(kind, _rejected)
    app.add_exception_handler(FrameworkHTTPException, _framework)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.include_router(routes)
    return app


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route on this path (FastAPI makes one route per method): the
    app's own (``/openapi.json``) and the service's."""
    methods: set[str] = set()
    for route in (*request.app.router.routes, *routes.routes):
        if route.matches(request.scope)[0] != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _framework_reason(
    request: Request, error: FrameworkHTTPException, headers: dict[str, str]
) -> str:
    path = request.url.path
    if error.status_code == 404:
        return f"no such path {path!r}; the API is listed at /docs"
    if error.status_code == 405:
        return f"{request.method} is not allowed on {path!r}; allowed: {headers['Allow']}"
    if isinstance(error.__cause__, RecursionError):
        return f"the JSON body {TOO_DEEP}"
    cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
    return f"{error.detail}{cause}"
