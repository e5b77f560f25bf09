"""Replay a dataset's cycles to a running service, as many concurrent cells, and score it.

Each of N streams replays one cycle of the chosen split (stream i gets cycle i mod the
number of cycles) with the cycle's own timestamps, paced at ``rate_hz`` requests per second
per stream (0 = as fast as the service answers). Stream starts are spread evenly over one
period so a fleet does not arrive in lock-step. Every answer is compared with the cycle's
true SOC, and every request's round-trip time is recorded, so one run is both the demo
and the load test: served-SOC error, latency percentiles, sustained samples/s, errors.

A stream waits for each answer before sending its next request (answers must come in
order for the state to be right); if the service falls behind, requests go out late,
which shows up as ``max_lag_s`` and an achieved rate below the target.

How requests travel (WebSocket, HTTP, NATS) is :mod:`bsoc.replay_transports`. A replay in
which any sample failed is a failed replay (:func:`replay_failure`), and the mistakes that
would fail every sample (no service at the URL, a wrong key) are refused before the first
stream starts.

With transport ``nats`` the URL is a fleet's NATS (``bsoc fleet``): each request is
published straight into the log and answered by the worker that owns the stream, so the
latency is end to end through the log.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle
from bsoc.errors import BsocError, ConfigError, DatasetNotFoundError
from bsoc.heap import settle_heap
from bsoc.replay_transports import ConnectionLost, HttpClient, NatsClient, open_socket
from bsoc.serve.errors import InvalidStreamId
from bsoc.serve.schemas import check_stream_id

TRANSPORTS = ("ws", "http", "nats")
KEY_REMEDY = "pass the service's key with --api-key-file FILE or BSOC_API_KEY"
PREFLIGHT_TIMEOUT_S = 10.0


class ReplayIncompleteError(BsocError):
    """The service did not accept every sample sent (its reasons are in the report)."""


@dataclass
class ReplayConfig:
    url: str = "http://127.0.0.1:8000"
    streams: int = 1
    rate_hz: float = 1.0  # requests per second per stream; 0 = closed loop, max rate
    batch: int = 1  # samples per request
    max_seconds: float | None = None
    api_key: str | None = None
    prefix: str = ""  # stream id prefix; empty = "replay-<random>"
    transport: str = "ws"
    connect_concurrency: int = 64
    timeout_s: float = 30.0
    nats_user: str | None = None  # with transport "nats"
    nats_password: str | None = None


@dataclass
class _Tally:
    """Everything the streams record, shared (all on one event loop)."""

    latencies: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    truth: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    ok: int = 0
    max_lag_s: float = 0.0


def load_cycles(dataset_dir: str | Path, split: str) -> list[Cycle]:
    cycles = Dataset.load(dataset_dir).split(split)
    if not cycles:
        raise DatasetNotFoundError(
            f"dataset {dataset_dir} has no '{split}' cycles", remedy="choose another --split"
        )
    return cycles


def replay(
    cycles: list[Cycle],
    config: ReplayConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the replay and return its report (see :func:`summarise`)."""
    _check(config)
    _preflight(config)
    settle_heap()  # this client's own pauses would be counted as service latency
    return asyncio.run(_replay(cycles, config, on_progress))


def _check(config: ReplayConfig) -> None:
    if config.transport not in TRANSPORTS:
        raise ConfigError(
            f"unknown transport {config.transport!r}", remedy=f"use one of {TRANSPORTS}"
        )
    if config.streams < 1 or config.batch < 1 or config.rate_hz < 0:
        raise ConfigError(
            "--streams and --batch must be at least 1 and --rate not negative",
            remedy="e.g. --streams 10 --rate 1",
        )
    if config.transport == "nats":
        if not config.url.startswith(("nats://", "tls://")):
            raise ConfigError(f"--nats {config.url!r} must start with nats:// or tls://")
    elif not config.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {config.url!r} must start with http:// or https://")
    if config.prefix:
        try:
            check_stream_id(f"{config.prefix}-00000")
        except InvalidStreamId as error:
            raise ConfigError(f"--prefix {config.prefix!r}: {error.message}") from None


def _headers(config: ReplayConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def _preflight(config: ReplayConfig) -> None:
    """Refuse at once what would fail every sample: no bsoc service at the URL, a wrong key."""
    import httpx

    if config.transport == "nats":
        return asyncio.run(NatsClient(config).check())

    base = config.url.rstrip("/")
    try:
        health = httpx.get(f"{base}/healthz", timeout=PREFLIGHT_TIMEOUT_S)
        listed = httpx.get(
            f"{base}/v1/streams?limit=1", headers=_headers(config), timeout=PREFLIGHT_TIMEOUT_S
        )
    except httpx.HTTPError as error:
        raise ConfigError(
            f"no service answers at {config.url} ({type(error).__name__}: {error})",
            remedy="start 'bsoc serve' there, or give its address with --url",
        ) from None
    try:
        looks_like_bsoc = health.status_code == 200 and "model" in health.json()
    except ValueError:
        looks_like_bsoc = False
    if not looks_like_bsoc:
        raise ConfigError(
            f"{config.url} is not a 'bsoc serve' service (/healthz answered "
            f"{health.status_code})",
            remedy="give the service's base URL with --url, e.g. http://127.0.0.1:8000",
        )
    if listed.status_code == 401:
        which = "refused the API key" if config.api_key else "requires an API key"
        raise ConfigError(f"the service at {config.url} {which}", remedy=KEY_REMEDY)


def replay_failure(report: dict[str, Any]) -> BsocError | None:
    """The error a replay ends with when any sample failed; None when every one was accepted.

    A refused key is the user's to fix (exit code 2); other failures are the service's.
    """
    errors: dict[str, int] = report["errors"]
    if not errors and report["samples_ok"] == report["samples_sent"]:
        return None
    worst = sorted(errors.items(), key=lambda item: -item[1])[:3]
    kinds = ", ".join(f"{kind} x{n}" for kind, n in worst) or "answers missing"
    message = (
        f"the service at {report['url']} accepted {report['samples_ok']} of "
        f"{report['samples_sent']} samples sent ({kinds})"
    )
    if "unauthorized" in errors:
        return ConfigError(message, remedy=KEY_REMEDY)
    return ReplayIncompleteError(
        message, remedy="see 'errors' in the report (--json) and the service's log"
    )


async def _replay(
    cycles: list[Cycle], config: ReplayConfig, on_progress: Callable[[int, int], None] | None
) -> dict[str, Any]:
    prefix = config.prefix or f"replay-{secrets.token_hex(3)}"
    tally = _Tally()
    plans = [_plan(cycles[i % len(cycles)], config) for i in range(config.streams)]
    planned = sum(len(rows) for rows, _ in plans)
    gate = asyncio.Semaphore(config.connect_concurrency)
    headers = _headers(config)
    started = time.monotonic()
    deadline = started + config.max_seconds if config.max_seconds else float("inf")
    period = config.batch / config.rate_hz if config.rate_hz > 0 else 0.0
    client = {"http": HttpClient, "nats": NatsClient, "ws": None}[config.transport]
    client = client(config, headers) if client else None

    async def one(i: int) -> None:
        rows, truth = plans[i]
        stream_id = f"{prefix}-{i:05d}"
        first = started + period * i / config.streams
        try:
            async with gate:
                sender = await (
                    client.for_stream(stream_id)
                    if client
                    else open_socket(config, headers, stream_id)
                )
            async with sender:
                for k in range(0, len(rows), config.batch):
                    due = first + period * (k // config.batch)
                    now = time.monotonic()
                    if due > now:
                        await asyncio.sleep(due - now)
                    if time.monotonic() >= deadline:
                        return
                    if period:  # closed loop (rate 0) has no schedule to lag behind
                        tally.max_lag_s = max(tally.max_lag_s, time.monotonic() - due)
                    chunk = rows[k : k + config.batch]
                    tally.sent += len(chunk)
                    sent_at = time.perf_counter()
                    socs, error = await sender.send(chunk)
                    tally.latencies.append(time.perf_counter() - sent_at)
                    if error is not None:
                        tally.errors[error] += len(chunk)
                        if error == "unauthorized":
                            return  # no later request of this stream can succeed
                        continue
                    tally.ok += len(chunk)
                    tally.served.extend(socs)
                    tally.truth.extend(truth[k : k + config.batch])
        except (OSError, asyncio.TimeoutError, ConnectionLost) as failure:
            tally.errors[f"connection: {type(failure).__name__} {failure}".strip()[:120]] += 1

    async def report_progress() -> None:
        while on_progress is not None:
            on_progress(tally.sent, planned)
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report_progress())
    try:
        await asyncio.gather(*(one(i) for i in range(config.streams)))
    finally:
        reporter.cancel()
        if client:
            await client.close()
    if on_progress is not None:
        on_progress(tally.sent, planned)
    return summarise(tally, config, prefix, cycles, time.monotonic() - started)


def _plan(cycle: Cycle, config: ReplayConfig) -> tuple[np.ndarray, np.ndarray]:
    """The rows a stream will send (cut to what fits in --max-seconds) and their true SOC."""
    rows = cycle.samples()
    truth = cycle.soc()
    if config.max_seconds and config.rate_hz > 0:
        keep = int(np.ceil(config.max_seconds * config.rate_hz)) * config.batch
        rows, truth = rows[:keep], truth[:keep]
    return rows, truth


def summarise(
    tally: _Tally, config: ReplayConfig, prefix: str, cycles: list[Cycle], elapsed_s: float
) -> dict[str, Any]:
    """The replay report: throughput, latency percentiles (ms), served-SOC error (%)."""
    latency_ms = np.asarray(tally.latencies) * 1e3
    error_pct = (np.asarray(tally.served) - np.asarray(tally.truth)) * 100.0
    pct = (lambda q: float(np.percentile(latency_ms, q))) if len(latency_ms) else (lambda q: None)
    return {
        "url": config.url,
        "transport": config.transport,
        "streams": config.streams,
        "stream_prefix": prefix,
        "rate_hz": config.rate_hz,
        "batch": config.batch,
        "cycles": sorted({c.meta.name for c in cycles[: config.streams]}),
        "elapsed_s": round(elapsed_s, 3),
        "requests": len(latency_ms),
        "samples_sent": tally.sent,
        "samples_ok": tally.ok,
        "errors": dict(tally.errors),
        "error_count": int(sum(tally.errors.values())),
        "samples_per_s": tally.ok / elapsed_s if elapsed_s > 0 else 0.0,
        "target_samples_per_s": config.streams * config.rate_hz * config.batch or None,
        "max_lag_s": round(tally.max_lag_s, 4) if config.rate_hz > 0 else None,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": float(latency_ms.max()) if len(latency_ms) else None,
        },
        "soc_error_pct": {
            "rmse": float(np.sqrt(np.mean(error_pct**2))) if len(error_pct) else None,
            "mae": float(np.mean(np.abs(error_pct))) if len(error_pct) else None,
            "max_abs": float(np.max(np.abs(error_pct))) if len(error_pct) else None,
        },
    }
