"""The edge's error table: every refusal as an HTTP status and an ``ErrorResponse`` body.

Domain refusals (:mod:`bsoc.serve.errors`) get their status here and nowhere else; the
edge adds its own (a missing key, a body that does not validate). The routes answer with
``Rejected.body()`` and the status, the WebSocket protocol with the body plus ``status``.
"""

from __future__ import annotations

from typing import Any

from bsoc.errors import BsocError
from bsoc.serve.errors import (
    InvalidStreamId,
    ModelFailed,
    Refused,
    SamplesNotIncreasing,
    SamplesNotNewer,
    StreamRateLimited,
    TooManyStreams,
    UnknownStream,
)
from bsoc.serve.schemas import ErrorResponse

HTTP_STATUS: dict[type[Refused], int] = {
    InvalidStreamId: 422,
    SamplesNotIncreasing: 422,
    SamplesNotNewer: 409,
    UnknownStream: 404,
    TooManyStreams: 429,
    StreamRateLimited: 429,
    ModelFailed: 500,
}
# Kinds for the refusals the framework itself makes before a route runs.
FRAMEWORK_ERROR_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
TOO_DEEP = "nests too deeply to parse; send one sample object or a flat list of them"
# The refusals each route documents in the OpenAPI schema.
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
        429: "The service holds its maximum number of streams, or (a fleet with "
        "--max-stream-rate) the stream sends faster than its rate limit.",
    }.items()
}


class Rejected(BsocError):
    """A refusal on its way out: HTTP status, error kind and the reason."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        self.status, self.kind = status, kind
        super().__init__(reason)

    @classmethod
    def of(cls, error: Rejected | Refused) -> Rejected:
        """``error`` as it leaves the service: a domain refusal gets its HTTP status."""
        if isinstance(error, Rejected):
            return error
        return cls(HTTP_STATUS[type(error)], error.kind, error.message)

    def body(self) -> dict:
        return {"error": self.kind, "reason": self.message}


def unauthorized() -> Rejected:
    return Rejected(401, "unauthorized", "missing or wrong API key; send "
                    "'Authorization: Bearer KEY' or 'X-API-Key: KEY'")


def error_details(errors: Any) -> list[dict[str, Any]]:
    """pydantic errors without their (possibly huge or unserialisable) input and context."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
