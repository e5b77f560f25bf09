"""How the load generator reaches a service: a WebSocket per stream, one shared HTTP client,
or a fleet's NATS log. A stream's sender sends a chunk of samples and returns the SOC of
each, or the kind of error the service answered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import numpy as np

from bsoc.estimator import SAMPLE_FIELDS


class Target(Protocol):
    """Where and how to reach the service (:class:`bsoc.replay.ReplayConfig` is one)."""

    url: str
    streams: int
    timeout_s: float
    nats_user: str | None
    nats_password: str | None


class ConnectionLost(Exception):
    """The connection broke (or the handshake was refused) before an answer came."""


def samples_json(chunk: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(SAMPLE_FIELDS, map(float, row))) for row in chunk]


class SocketSender:
    """One WebSocket per stream: send a batch (or one sample), read its answer."""

    def __init__(self, connection: Any, timeout_s: float) -> None:
        self.connection, self.timeout_s = connection, timeout_s

    async def __aenter__(self) -> SocketSender:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.connection.close()

    async def send(self, chunk: np.ndarray) -> tuple[list[float], str | None]:
        samples = samples_json(chunk)
        try:
            await self.connection.send(json.dumps(samples[0] if len(samples) == 1 else samples))
            answer = json.loads(await asyncio.wait_for(self.connection.recv(), self.timeout_s))
        except Exception as error:  # websockets raises its own ConnectionClosed family
            if isinstance(error, asyncio.TimeoutError):
                raise
            raise ConnectionLost(str(error)) from error
        if "error" in answer:
            return [], str(answer["error"])
        estimates = answer["estimates"] if len(samples) > 1 else [answer]
        return [e["soc"] for e in estimates], None


async def open_socket(config: Target, headers: dict[str, str], stream_id: str) -> Any:
    from websockets.asyncio.client import connect

    base = config.url.replace("http", "ws", 1).rstrip("/")
    try:
        connection = await connect(
            f"{base}/v1/streams/{stream_id}",
            additional_headers=headers,
            max_size=None,
            open_timeout=config.timeout_s,
        )
    except (OSError, asyncio.TimeoutError):
        raise
    except Exception as error:  # handshake refused (e.g. HTTP 403 for a wrong key)
        raise ConnectionLost(str(error)) from error
    return SocketSender(connection, config.timeout_s)


class HttpClient:
    """One shared keep-alive HTTP client; each stream POSTs its batches in order."""

    def __init__(self, config: Target, headers: dict[str, str]) -> None:
        import httpx

        self.base = config.url.rstrip("/")
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=config.timeout_s,
            limits=httpx.Limits(max_connections=min(config.streams, 512)),
        )

    async def for_stream(self, stream_id: str) -> HttpStream:
        return HttpStream(self, stream_id)

    async def close(self) -> None:
        await self.client.aclose()


class HttpStream:
    def __init__(self, owner: HttpClient, stream_id: str) -> None:
        self.owner, self.url = owner, f"{owner.base}/v1/streams/{stream_id}/samples"

    async def __aenter__(self) -> HttpStream:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    async def send(self, chunk: np.ndarray) -> tuple[list[float], str | None]:
        import httpx

        try:
            response = await self.owner.client.post(self.url, json=samples_json(chunk))
        except httpx.TimeoutException as error:
            raise asyncio.TimeoutError(str(error)) from error
        except httpx.TransportError as error:
            raise ConnectionLost(str(error)) from error
        if response.status_code != 200:
            try:
                return [], str(response.json().get("error", response.status_code))
            except ValueError:
                return [], f"http {response.status_code}"
        return [e["soc"] for e in response.json()["estimates"]], None


class NatsClient:
    """One NATS connection for every stream: publish into the fleet's log, await the answer."""

    def __init__(self, config: Target, headers: dict[str, str] | None = None) -> None:
        from bsoc.fleet.connection import NatsTarget

        self.config = config
        self.target = NatsTarget(config.url, config.nats_user, config.nats_password)
        self.nc: Any = None
        self.waiting: dict[str, asyncio.Future] = {}
        self.count = 0
        self.opening = asyncio.Lock()

    async def check(self) -> None:
        """A fleet answers there (a worker has set it up); else the one-line error."""
        from bsoc.fleet.connection import connect
        from bsoc.fleet.log import read_settings

        nc = await connect(self.target, "bsoc-replay-check")
        try:
            await read_settings(nc.jetstream(), self.config.url)
        finally:
            await nc.close()

    async def for_stream(self, stream_id: str) -> NatsStream:
        from bsoc.fleet.connection import connect

        async with self.opening:
            if self.nc is None:
                self.nc = await connect(self.target, "bsoc-replay")
                self.inbox = self.nc.new_inbox()
                await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_answer)
        return NatsStream(self, stream_id)

    async def _on_answer(self, message: Any) -> None:
        waiting = self.waiting.get(message.subject)
        if waiting is not None and not waiting.done():  # repeats after a takeover are dropped
            waiting.set_result(json.loads(message.data))

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.drain()


class NatsStream:
    def __init__(self, owner: NatsClient, stream_id: str) -> None:
        from bsoc.fleet.subjects import samples_subject

        self.owner, self.subject = owner, samples_subject(stream_id)

    async def __aenter__(self) -> NatsStream:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    async def send(self, chunk: np.ndarray) -> tuple[list[float], str | None]:
        from bsoc.fleet.subjects import REPLY_HEADER

        owner = self.owner
        owner.count += 1
        reply = f"{owner.inbox}.{owner.count}"
        answer = owner.waiting[reply] = asyncio.get_running_loop().create_future()
        samples = samples_json(chunk)
        try:
            await owner.nc.publish(self.subject, json.dumps(samples).encode(),
                                   headers={REPLY_HEADER: reply})  # fmt: skip
            result = await asyncio.wait_for(answer, owner.config.timeout_s)
        finally:
            owner.waiting.pop(reply, None)
        if "error" in result:
            return [], str(result["error"])
        return [e["soc"] for e in result["estimates"]], None
