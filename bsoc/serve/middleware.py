"""ASGI middleware of the service: bodies over the limit are refused before they are parsed."""

from __future__ import annotations

import json
from typing import Any

from bsoc.serve.metrics import Metrics


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
