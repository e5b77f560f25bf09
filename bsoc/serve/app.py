"""The FastAPI application: routes, error mapping, lifecycle (batcher, snapshots).

``create_app(estimator, ServeConfig(...), model_info)`` builds a self-contained app; the
``bsoc serve`` command runs it under uvicorn, tests run it on a free loopback port.
Routes follow DESIGN.md's serving contract; every rejection is a JSON
:class:`~bsoc.serve.schemas.ErrorResponse` with a kind and a reason, counted in /metrics.
The routes only talk to a :class:`StreamService`, so the fleet's gateway
(:mod:`bsoc.fleet.gateway`) serves the same API in front of its log with :func:`build_app`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Path as PathParam, Query, Request, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as FrameworkHTTPException
from starlette.routing import Match
from starlette.websockets import WebSocketDisconnect
from swagger_ui_bundle import swagger_ui_path

from bsoc import __version__
from bsoc.estimator import CONFIG_FILE, WEIGHTS_FILE, SocEstimator
from bsoc.heap import settle_heap
from bsoc.serve.auth import key_matches
from bsoc.serve.batching import MicroBatcher
from bsoc.serve.metrics import Metrics
from bsoc.serve.schemas import (
    STREAM_ID_PATTERN,
    ErrorResponse,
    Estimate,
    Health,
    History,
    ModelInfo,
    Rejected,
    Sample,
    SampleList,
    SamplesResponse,
    StreamList,
    StreamStatus,
    StreamSummary,
    check_stream_id,
    describe_validation_errors,
)
from bsoc.serve.snapshot import (
    DamagedSnapshotError,
    check_writable,
    read_snapshot,
    remove_leftover_temporaries,
    set_aside,
    write_snapshot,
)
from bsoc.serve.streams import HISTORY_FIELDS, Stream, StreamRegistry

STATIC_DIR = Path(__file__).parent / "static"
WS_POLICY_VIOLATION, WS_UNSUPPORTED_DATA, WS_TOO_BIG = 1008, 1003, 1009
# Kinds for the refusals the framework itself makes before a route runs.
FRAMEWORK_ERROR_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
TOO_DEEP = "nests too deeply to parse; send one sample object or a flat list of them"

log = logging.getLogger("bsoc.serve")


@dataclass
class ServeConfig:
    """Service settings (each is a ``bsoc serve`` option)."""

    api_key: str | None = None
    snapshot_path: Path | None = None
    snapshot_interval_s: float = 30.0
    discard_bad_snapshot: bool = False
    gap_limit_s: float = 300.0
    gap_policy: str = "reset"
    max_body_bytes: int = 1 << 20
    max_streams: int = 20_000
    batch_wait_s: float = 0.003
    max_batch: int = 4096
    history_len: int = 300


def describe_model(estimator: SocEstimator, directory: str | Path | None) -> dict[str, Any]:
    """Name, kind, state size and a content fingerprint of the model folder's files."""
    digest = hashlib.sha256()
    if directory is not None:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = Path(directory) / name
            if path.is_file():
                digest.update(path.read_bytes())
    digest.update(json.dumps([estimator.kind, len(estimator.initial_state())]).encode())
    return {
        "name": str(getattr(estimator, "name", "model")),
        "kind": estimator.kind,
        "state_size": int(len(estimator.initial_state())),
        "fingerprint": digest.hexdigest()[:16],
    }


class StreamService(Protocol):
    """What the routes need from whatever holds the streams (this process, or a fleet)."""

    config: Any  # .api_key and .max_body_bytes
    metrics: Metrics

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def apply(
        self, stream_id: str, samples: list[Sample], transport: str
    ) -> list[Estimate]: ...

    async def list_streams(self, prefix: str, limit: int) -> StreamList: ...

    async def stream_status(self, stream_id: str, history: int) -> StreamStatus: ...

    async def delete_stream(self, stream_id: str) -> StreamStatus: ...

    async def health(self) -> Health: ...

    async def metrics_text(self) -> str: ...


class Service:
    """What the routes share: the registry, the batcher, metrics, snapshots."""

    def __init__(self, estimator: SocEstimator, config: ServeConfig, model: dict[str, Any]):
        self.config, self.model = config, model
        self.metrics = Metrics(snapshots=config.snapshot_path is not None)
        self.batcher = MicroBatcher(
            estimator,
            max_wait_s=config.batch_wait_s,
            max_jobs=config.max_batch,
            on_batch=self.metrics.observe_batch,
        )
        self.registry = StreamRegistry(
            self.batcher,
            estimator.initial_state(),
            gap_limit_s=config.gap_limit_s,
            gap_policy=config.gap_policy,
            max_streams=config.max_streams,
            history_len=config.history_len,
        )
        # One step now, so that loading (or, after an upgrade, compiling) the model's kernel
        # happens before the service reports healthy, not in its first requests.
        estimator.step_batch(np.array([[0.0, 3.7, 0.0, 25.0]]), estimator.initial_state()[None])
        self.restored, self.set_aside_to = 0, None
        if config.snapshot_path is not None:
            self.restored = self._restore(config.snapshot_path)
        self._stopping = asyncio.Event()
        self._snapshotter: asyncio.Task | None = None

    def _restore(self, path: Path) -> int:
        """Refuse an unwritable path now (not at the first periodic write), then load the states.

        Also removes the temporary file of a write that a killed predecessor never finished.
        """
        check_writable(path)
        remove_leftover_temporaries(path)
        try:
            arrays = read_snapshot(path, self.model)
        except DamagedSnapshotError as damaged:
            if not self.config.discard_bad_snapshot:
                raise
            self.set_aside_to = set_aside(path)
            log.warning("%s; renamed it to %s and starting with no streams", damaged.message,
                        self.set_aside_to)  # fmt: skip
            return 0
        return 0 if arrays is None else self.registry.restore(arrays)

    async def start(self) -> None:
        settle_heap()
        self.batcher.start()
        if self.config.snapshot_path is not None and self.config.snapshot_interval_s > 0:
            self._snapshotter = asyncio.get_running_loop().create_task(self._snapshot_loop())

    async def stop(self) -> None:
        """Finish a snapshot in progress, stop the batcher, and always try the shutdown snapshot."""
        self._stopping.set()
        try:
            if self._snapshotter is not None:
                await self._snapshotter
            await self.batcher.stop()
        finally:
            if self.config.snapshot_path is not None:
                await self.snapshot()

    async def snapshot(self) -> None:
        """Write every stream's state.

        Never raises: a failed write is counted and logged, and /healthz reports degraded
        until a later write (the next period, or the shutdown) succeeds.
        """
        arrays = self.registry.export()  # on the loop: a consistent set of committed states
        path = self.config.snapshot_path
        try:
            await asyncio.to_thread(write_snapshot, path, arrays, self.model)
        except Exception as error:  # mostly OSError; whatever it is, the next period retries
            reason = f"the last snapshot write to {path} failed ({type(error).__name__}: {error})"
            self.metrics.observe_snapshot_error(reason)
            log.warning("%s; %d streams not saved", reason, len(arrays["stream_ids"]))
            return
        self.metrics.observe_snapshot()

    async def _snapshot_loop(self) -> None:
        """One write per interval until stop() (which never interrupts a write in progress)."""
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.config.snapshot_interval_s)
                return
            except TimeoutError:
                await self.snapshot()

    async def apply(self, stream_id: str, samples: list[Sample], transport: str) -> list[Estimate]:
        started = time.perf_counter()
        rows = np.array([s.row() for s in samples], dtype=np.float64)
        try:
            applied = await self.registry.apply(stream_id, rows)
        except RuntimeError as error:  # the model failed; nothing was committed
            raise Rejected(500, "internal", f"the model failed: {error}") from error
        gaps = int(applied.gap.sum())
        self.metrics.observe_request(transport, time.perf_counter() - started, len(rows), gaps)
        spread = [None] * len(rows) if applied.soc_std is None else applied.soc_std.tolist()
        return [
            Estimate(time_s=float(t), soc=float(s), soc_std=d, gap=bool(g))
            for t, s, d, g in zip(rows[:, 0].tolist(), applied.soc.tolist(), spread,
                                  applied.gap.tolist())
        ]

    async def list_streams(self, prefix: str, limit: int) -> StreamList:
        chosen = [(i, s) for i, s in self.registry if i.startswith(prefix)]
        return stream_list(chosen, limit)

    async def stream_status(self, stream_id: str, history: int) -> StreamStatus:
        return stream_status(stream_id, self.registry.get(stream_id), history)

    async def delete_stream(self, stream_id: str) -> StreamStatus:
        return stream_status(stream_id, await self.registry.delete(stream_id), 0)

    async def health(self) -> Health:
        failure = self.metrics.snapshot_failure
        return Health(
            status="degraded" if failure else "ok",
            reason=failure,
            version=__version__,
            model=ModelInfo(**self.model),
            streams=len(self.registry),
            uptime_s=time.time() - self.metrics.started,
            gap_limit_s=self.config.gap_limit_s,
            gap_policy=self.config.gap_policy,
        )

    async def metrics_text(self) -> str:
        model = {k: str(v) for k, v in self.model.items()}
        return self.metrics.render(len(self.registry), model)


class BodyLimit:
    """Pure ASGI middleware: refuse HTTP bodies over ``limit`` bytes with 413, before parsing.

    Checks Content-Length first, then counts the bytes of bodies sent without it (chunked).
    """

    def __init__(self, app: Any, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def buffered() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()  # only a disconnect can follow a complete body
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, buffered, send)

    async def _refuse(self, send: Any) -> None:
        self.metrics.observe_error("payload_too_large")
        payload = json.dumps(
            {
                "error": "payload_too_large",
                "reason": f"request body exceeds {self.limit} bytes; split it into smaller requests",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "The body cannot be parsed at all (not UTF-8 text, or JSON nested too deeply).",
        401: "Missing or wrong API key (writes, and stream reads, when a key is configured).",
        404: "No such stream.",
        409: "A sample is not later than the stream's last accepted time.",
        413: "Request body larger than the configured limit.",
        422: "Malformed samples: wrong type, missing/extra field, NaN/inf, outside physical "
        "range, time not strictly increasing within the request.",
        429: "The service holds its maximum number of streams.",
    }.items()
}

StreamId = Annotated[str, PathParam(pattern=STREAM_ID_PATTERN, max_length=128)]


def create_app(estimator: SocEstimator, config: ServeConfig, model: dict[str, Any]) -> FastAPI:
    """Build the service for one model. Restores the snapshot now, so errors surface early."""
    return build_app(Service(estimator, config, model))


def build_app(service: StreamService, *, description: str = "") -> FastAPI:
    """The HTTP/WebSocket API in front of ``service`` (``description`` is added to /docs)."""
    config = service.config

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="bsoc live SOC service",
        version=__version__,
        description=(
            "Streams of cell samples in, state of charge out. Each stream keeps its model "
            "state between requests; requests to one stream are applied one at a time in "
            "arrival order and must carry strictly newer timestamps. Rejected requests "
            "change nothing. Writes (and stream reads) need the API key when one is "
            "configured, as `Authorization: Bearer KEY` or `X-API-Key: KEY`."
            + (f" {description}" if description else "")
        ),
        lifespan=lifespan,
        docs_url=None,  # served below from vendored assets: FastAPI's default page needs a CDN
    )
    app.state.service = service
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, metrics=service.metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI for the OpenAPI spec, entirely from this server (works offline)."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    def require_key(
        request: Request,
        _bearer: Any = Security(HTTPBearer(auto_error=False)),
        _header: Any = Security(APIKeyHeader(name="X-API-Key", auto_error=False)),
    ) -> None:
        if not key_matches(config.api_key, request.headers):
            raise Rejected(401, "unauthorized", "missing or wrong API key; send "
                           "'Authorization: Bearer KEY' or 'X-API-Key: KEY'")  # fmt: skip

    @app.exception_handler(Rejected)
    async def _rejected(_: Request, error: Rejected) -> JSONResponse:
        service.metrics.observe_error(error.kind)
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(FrameworkHTTPException)
    async def _framework(request: Request, error: FrameworkHTTPException) -> JSONResponse:
        """Unknown paths, wrong methods, unparsable bodies: the same shape, counted alike."""
        kind = FRAMEWORK_ERROR_KINDS.get(error.status_code, f"http_{error.status_code}")
        service.metrics.observe_error(kind)
        headers = dict(error.headers or {})
        if error.status_code == 405:  # the router names one route's methods, not the path's
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(
            {"error": kind, "reason": _framework_reason(request, error, headers)},
            status_code=error.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        service.metrics.observe_error("validation")
        details = _error_details(error.errors())
        return JSONResponse(
            {
                "error": "validation",
                "reason": describe_validation_errors(details),
                "details": details,
            },
            status_code=422,
        )

    @app.post(
        "/v1/streams/{stream_id}/samples",
        response_model=SamplesResponse,
        responses=ERRORS,
        dependencies=[Depends(require_key)],
        summary="Send samples of one stream; get one SOC estimate per sample",
    )
    async def post_samples(stream_id: StreamId, samples: SampleList) -> SamplesResponse:
        estimates = await service.apply(stream_id, samples, "http")
        return SamplesResponse(stream_id=stream_id, estimates=estimates)

    @app.websocket("/v1/streams/{stream_id}")
    async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
        """One JSON sample per message -> one estimate; a JSON list -> a list of estimates."""
        await serve_socket(websocket, stream_id, service)

    @app.get(
        "/v1/streams",
        response_model=StreamList,
        responses={401: ERRORS[401]},
        dependencies=[Depends(require_key)],
        summary="List streams with their latest SOC",
    )
    async def list_streams(
        prefix: str = Query("", description="Only ids starting with this."),
        limit: int = Query(1000, ge=1, le=100_000),
    ) -> StreamList:
        return await service.list_streams(prefix, limit)

    @app.get(
        "/v1/streams/{stream_id}",
        response_model=StreamStatus,
        responses={401: ERRORS[401], 404: ERRORS[404]},
        dependencies=[Depends(require_key)],
        summary="A stream's latest SOC, counters and (optionally) recent history",
    )
    async def get_stream(
        stream_id: StreamId,
        history: int = Query(0, ge=0, le=100_000, description="Recent samples to include."),
    ) -> StreamStatus:
        return await service.stream_status(stream_id, history)

    @app.delete(
        "/v1/streams/{stream_id}",
        response_model=StreamStatus,
        responses={401: ERRORS[401], 404: ERRORS[404]},
        dependencies=[Depends(require_key)],
        summary="Forget a stream (its next sample starts it afresh)",
    )
    async def delete_stream(stream_id: StreamId) -> StreamStatus:
        return await service.delete_stream(stream_id)

    @app.get("/healthz", response_model=Health, summary="Liveness and what is served")
    async def healthz() -> Health:
        return await service.health()

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text format 0.0.4)",
    )
    async def metrics() -> PlainTextResponse:
        text = await service.metrics_text()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route on this path (FastAPI makes one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
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


def _error_details(errors: Any) -> list[dict[str, Any]]:
    """pydantic errors without their (possibly huge or unserialisable) input and context."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]


def stream_list(chosen: list[tuple[str, Stream]], limit: int) -> StreamList:
    """The listing of ``chosen`` (id order), at most ``limit`` of them, with the full count."""
    return StreamList(
        count=len(chosen),
        streams=[
            StreamSummary(stream_id=i, samples=s.samples, last_time_s=s.last_time, soc=s.soc,
                          soc_std=s.soc_std)
            for i, s in chosen[:limit]
        ],
    )


def stream_status(stream_id: str, stream: Stream, history: int) -> StreamStatus:
    """What GET and DELETE answer about one stream."""
    recent = None
    if history:
        rows = stream.recent(history)
        recent = History(**{name: rows[:, k].tolist() for k, name in enumerate(HISTORY_FIELDS)
                            if name != "soc_std"},
                         soc_std=None if stream.soc_std is None
                         else rows[:, HISTORY_FIELDS.index("soc_std")].tolist())
    t, v, i, c = stream.last_sample.tolist()
    return StreamStatus(
        stream_id=stream_id,
        samples=stream.samples,
        gaps=stream.gaps,
        last_time_s=stream.last_time,
        soc=stream.soc,
        soc_std=stream.soc_std,
        last_sample=Sample(time_s=t, voltage_v=v, current_a=i, temperature_c=c),
        updated_unix_s=stream.updated_unix_s,
        history=recent,
    )


_ONE = TypeAdapter(Sample)
_MANY = TypeAdapter(SampleList)


async def serve_socket(websocket: WebSocket, stream_id: str, service: StreamService) -> None:
    """The WebSocket protocol: auth at the handshake, then one answer per message.

    A bad message gets an error object (same shape as HTTP errors, plus ``status``) and
    the connection stays open; binary frames close it with 1003, oversized ones with 1009,
    a missing key or bad stream id refuses the handshake (close 1008).
    """
    metrics = service.metrics
    if not key_matches(service.config.api_key, websocket.headers):
        metrics.observe_error("unauthorized")
        return await websocket.close(WS_POLICY_VIOLATION, "missing or wrong API key")
    try:
        check_stream_id(stream_id)
    except Rejected as error:
        metrics.observe_error(error.kind)
        return await websocket.close(WS_POLICY_VIOLATION, error.message[:120])
    await websocket.accept()
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            metrics.observe_error("validation")
            return await websocket.close(WS_UNSUPPORTED_DATA, "send JSON text frames")
        if len(text) > service.config.max_body_bytes:
            metrics.observe_error("payload_too_large")
            return await websocket.close(
                WS_TOO_BIG, f"message exceeds {service.config.max_body_bytes} bytes"
            )
        try:
            await websocket.send_json(await _answer(service, stream_id, text))
        except Rejected as error:
            metrics.observe_error(error.kind)
            await websocket.send_json({**error.body(), "status": error.status})
        except WebSocketDisconnect:
            return


def parse_message(text: str | bytes) -> tuple[list[Sample], bool]:
    """The samples of one message (a sample object or a list of them) and whether it was one
    object; :class:`Rejected` (422) with the reason if it is not valid."""
    try:
        payload = json.loads(text)
        single = isinstance(payload, dict)
        samples = [_ONE.validate_python(payload)] if single else _MANY.validate_python(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = getattr(error, "msg", None) or getattr(error, "reason", None)
        raise Rejected(422, "validation", f"message is not JSON ({reason})") from None
    except RecursionError:
        raise Rejected(422, "validation", f"the message {TOO_DEEP}") from None
    except ValidationError as error:
        details = _error_details(error.errors())
        raise Rejected(422, "validation", describe_validation_errors(details)) from None
    return samples, single


async def _answer(service: StreamService, stream_id: str, text: str) -> dict[str, Any]:
    samples, single = parse_message(text)
    estimates = await service.apply(stream_id, samples, "ws")
    if single:
        return estimates[0].model_dump()
    return {"stream_id": stream_id, "estimates": [e.model_dump() for e in estimates]}
