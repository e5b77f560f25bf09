"""``bsoc fleet gateway``: the ``bsoc serve`` HTTP/WebSocket API in front of the log.

Today's clients keep working unchanged: the routes, validation, error shapes, dashboard and
docs are ``bsoc serve``'s own (:func:`bsoc.serve.app.build_app`); only what holds the
streams differs. A write is published to ``bsoc.samples.<token>`` and answered when the
owning worker has applied it (or refused it: the same statuses and kinds as ``bsoc serve``,
from the same rules). DELETE goes through the log too, so it is ordered with the samples and
replayed like them. Reads ask the owner of the stream's partition directly.

The log's acknowledgement is awaited first: a 503 means nothing was stored (resend), a 504
means the samples are stored but no estimate came within ``--timeout`` (a partition between
owners); they will be applied, so the client must not resend them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from bsoc import __version__
from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.log import FleetSettings, read_settings
from bsoc.fleet.metrics import render_worker_metrics
from bsoc.fleet.queries import GATHER_TIMEOUT_S, query_fleet
from bsoc.fleet.subjects import (
    DELETE_OP,
    OP_HEADER,
    QUERY,
    REPLY_HEADER,
    partition_of,
    samples_subject,
    token,
)
from bsoc.serve.metrics import Metrics
from bsoc.serve.rejections import Rejected
from bsoc.serve.schemas import (
    Estimate,
    Health,
    ModelInfo,
    Sample,
    StreamList,
    StreamStatus,
)


@dataclass
class GatewayConfig:
    """Gateway settings (each is a ``bsoc fleet gateway`` option)."""

    target: NatsTarget
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    timeout_s: float = 10.0


class FleetGateway:
    """A :class:`~bsoc.serve.service.StreamService` whose streams live in the fleet's workers."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self._waiting: dict[str, asyncio.Future] = {}
        self._counter = itertools.count()
        self.settings: FleetSettings | None = None

    async def start(self) -> None:
        self.nc = await connect(self.config.target, "bsoc-gateway")
        self.js = self.nc.jetstream(timeout=self.config.timeout_s)
        self.settings = await read_settings(self.js, self.config.target.url)
        self.inbox = self.nc.new_inbox()
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_answer)

    async def stop(self) -> None:
        await self.nc.drain()

    async def _on_answer(self, message: Any) -> None:
        waiting = self._waiting.get(message.subject)
        if waiting is not None and not waiting.done():  # a repeat after a takeover: dropped
            waiting.set_result(json.loads(message.data))

    async def _through_log(self, stream_id: str, payload: bytes, headers: dict[str, str]) -> dict:
        """Publish to the log, then wait for the owning worker's answer."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import APIError, NoStreamResponseError

        reply = f"{self.inbox}.{next(self._counter)}"
        answer = self._waiting[reply] = asyncio.get_running_loop().create_future()
        try:
            try:
                ack = await self.js.publish(
                    samples_subject(stream_id), payload, headers={**headers, REPLY_HEADER: reply}
                )
            except (NatsTimeout, NoRespondersError, NoStreamResponseError, APIError,
                    asyncio.TimeoutError) as error:
                raise Rejected(503, "unavailable", f"the log did not store the request "
                               f"({type(error).__name__}); nothing was applied, send it "
                               "again") from None  # fmt: skip
            try:
                return await asyncio.wait_for(answer, self.config.timeout_s)
            except asyncio.TimeoutError:
                partition = partition_of(stream_id, self._partitions())
                raise Rejected(504, "timeout", f"stored in the log (sequence {ack.seq}) but no "
                               f"worker answered within {self.config.timeout_s:g} s (partition "
                               f"{partition} has no live owner?); it will be applied when one "
                               "takes over: do not send it again") from None  # fmt: skip
        finally:
            self._waiting.pop(reply, None)

    def _partitions(self) -> int:
        assert self.settings is not None
        return self.settings.partitions

    async def apply(self, stream_id: str, samples: list[Sample], transport: str) -> list[Estimate]:
        started = time.perf_counter()
        payload = json.dumps([s.model_dump() for s in samples]).encode()
        answer = await self._through_log(stream_id, payload, {})
        if "error" in answer:
            raise Rejected(answer["status"], answer["error"], answer["reason"])
        estimates = [Estimate(**e) for e in answer["estimates"]]
        gaps = sum(e.gap for e in estimates)
        self.metrics.observe_request(transport, time.perf_counter() - started, len(samples), gaps)
        return estimates

    async def delete_stream(self, stream_id: str) -> StreamStatus:
        answer = await self._through_log(stream_id, b"", {OP_HEADER: DELETE_OP})
        if "error" in answer:
            raise Rejected(answer["status"], answer["error"], answer["reason"])
        return StreamStatus(**answer["deleted"])

    async def stream_status(self, stream_id: str, history: int) -> StreamStatus:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        partition = partition_of(stream_id, self._partitions())
        subject = f"{QUERY}.{partition}.stream.{token(stream_id)}"
        try:
            message = await self.nc.request(subject, str(history).encode(), GATHER_TIMEOUT_S)
        except (NoRespondersError, NatsTimeout):
            raise Rejected(503, "unavailable", f"no worker owns partition {partition} of "
                           f"stream {stream_id!r} right now; ask again in a few "
                           "seconds") from None  # fmt: skip
        answer = json.loads(message.data)
        if "error" in answer:
            raise Rejected(answer["status"], answer["error"], answer["reason"])
        return StreamStatus(**answer["status"])

    async def fleet(self, request: dict[str, Any] | None = None) -> tuple[list[dict], list[int]]:
        return await query_fleet(self.nc, self._partitions(), request)

    async def list_streams(self, prefix: str, limit: int) -> StreamList:
        answers, missing = await self.fleet({"prefix": prefix, "limit": limit})
        if missing:
            raise Rejected(503, "unavailable", f"partitions {missing} have no live worker right "
                           "now, so the list would be incomplete; ask again in a few "
                           "seconds")  # fmt: skip
        streams = sorted(
            (s for a in answers for s in a["streams"]["streams"]), key=lambda s: s["stream_id"]
        )
        count = sum(a["streams"]["count"] for a in answers)
        return StreamList(count=count, streams=streams[:limit])

    async def health(self) -> Health:
        assert self.settings is not None
        answers, missing = await self.fleet()
        reason = (
            f"partitions {missing} have no live worker; their samples wait in the log"
            if missing
            else None
        )
        return Health(
            status="degraded" if missing else "ok",
            reason=reason,
            version=__version__,
            model=ModelInfo(**self.settings.model),
            streams=sum(p["streams"] for a in answers for p in a["partitions"].values()),
            uptime_s=time.time() - self.metrics.started,
            gap_limit_s=self.settings.gap_limit_s,
            gap_policy=self.settings.gap_policy,
        )

    async def metrics_text(self) -> str:
        """The gateway's own metrics, then every worker's, labelled by worker."""
        assert self.settings is not None
        answers, missing = await self.fleet()
        model = {k: str(v) for k, v in self.settings.model.items()}
        streams = sum(p["streams"] for a in answers for p in a["partitions"].values())
        return self.metrics.render(streams, model) + render_worker_metrics(answers, missing)
