"""What the service refuses, as domain errors: one class per rule, a ``kind`` per class.

The stream registry, the snapshot reader and the load generator raise these; they know no
transport. HTTP statuses are assigned at the edge (:mod:`bsoc.serve.rejections`), for the
routes and the WebSocket protocol alike. A refusal is raised before any state changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bsoc.errors import BsocError


class Refused(BsocError):
    """A request the service refuses; ``kind`` is the machine-readable name clients see."""

    kind: ClassVar[str]

    def __init_subclass__(cls, kind: str = "", **rest: Any) -> None:
        super().__init_subclass__(**rest)
        cls.kind = kind or cls.kind


class InvalidStreamId(Refused, kind="validation"):
    """A stream id outside the allowed characters or length."""


class SamplesOutOfOrder(Refused, kind="out_of_order"):
    """Samples that do not come strictly after the ones before them."""


class SamplesNotIncreasing(SamplesOutOfOrder):
    """The samples of one request are not in strictly increasing time."""


class SamplesNotNewer(SamplesOutOfOrder):
    """A request's first sample is not later than the stream's last accepted one."""


class UnknownStream(Refused, kind="not_found"):
    """No stream of that id (it has sent no samples, or was deleted)."""


class TooManyStreams(Refused, kind="too_many_streams"):
    """The service already holds its maximum number of streams."""


class StreamRateLimited(Refused, kind="rate_limited"):
    """A stream sends more samples per second than its limit (the fleet's workers)."""


class ModelFailed(Refused, kind="internal"):
    """The model raised while stepping a request's samples; nothing was committed."""
