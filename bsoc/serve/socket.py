"""The WebSocket protocol of ``/v1/streams/{id}``: auth at the handshake, one answer a message.

A message is one sample object (answered with one estimate) or a list of them (answered
with a list). A bad message gets an error object (the HTTP error's shape plus ``status``)
and the connection stays open; binary frames close it with 1003, oversized ones with 1009,
a missing key or bad stream id refuses the handshake (close 1008).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from bsoc.serve.auth import key_matches
from bsoc.serve.errors import InvalidStreamId, Refused
from bsoc.serve.rejections import TOO_DEEP, Rejected, error_details
from bsoc.serve.schemas import Sample, SampleList, check_stream_id, describe_validation_errors
from bsoc.serve.service import StreamService

WS_POLICY_VIOLATION, WS_UNSUPPORTED_DATA, WS_TOO_BIG = 1008, 1003, 1009

_ONE = TypeAdapter(Sample)
_MANY = TypeAdapter(SampleList)


async def serve_socket(websocket: WebSocket, stream_id: str, service: StreamService) -> None:
    """Serve one connection until the client goes away (see the module docstring)."""
    metrics = service.metrics
    if not key_matches(service.config.api_key, websocket.headers):
        metrics.observe_error("unauthorized")
        return await websocket.close(WS_POLICY_VIOLATION, "missing or wrong API key")
    try:
        check_stream_id(stream_id)
    except InvalidStreamId as error:
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
        except (Rejected, Refused) as error:
            rejected = Rejected.of(error)
            metrics.observe_error(rejected.kind)
            await websocket.send_json({**rejected.body(), "status": rejected.status})
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
        details = error_details(error.errors())
        raise Rejected(422, "validation", describe_validation_errors(details)) from None
    return samples, single


async def _answer(service: StreamService, stream_id: str, text: str) -> dict[str, Any]:
    samples, single = parse_message(text)
    estimates = await service.apply(stream_id, samples, "ws")
    if single:
        return estimates[0].model_dump()
    return {"stream_id": stream_id, "estimates": [e.model_dump() for e in estimates]}
