"""What a worker answers for one message of the log, and where the answer goes.

Each message is answered on ``bsoc.soc.<token>`` (and on its ``Bsoc-Reply`` subject, for
the gateway and replay) with the estimates or the refusal, in the same kinds and statuses as
``bsoc serve``; a refusal also goes to the dead-letter subject with its reason. Answers are
at-least-once: after a takeover the messages since the last checkpoint are answered again,
and after the worker's NATS connection drops the answers of the moments before it are sent
again (:class:`AnswerPublisher`), with identical estimates and the same sequence number,
which is how a consumer of the answers drops the repeats.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

import numpy as np

from bsoc.fleet.metrics import WorkerMetrics
from bsoc.fleet.ratelimit import StreamRateLimit
from bsoc.fleet.subjects import DELETE_OP, OP_HEADER, REPLY_HEADER, dead_subject, soc_subject
from bsoc.serve.errors import Refused
from bsoc.serve.rejections import Rejected
from bsoc.serve.schemas import check_stream_id
from bsoc.serve.service import estimates_of, stream_status
from bsoc.serve.socket import parse_message
from bsoc.serve.streams import StreamRegistry

REASON_HEADER_CHARS = 500
RESEND_WINDOW_S = 2.0  # answers sent this long before a disconnection are sent again
RESEND_MAX = 65_536  # at most this many kept for it

log = logging.getLogger("bsoc.fleet")


async def answer_message(
    registry: StreamRegistry,
    rate_limit: StreamRateLimit,
    stream_id: str,
    sequence: int,
    log_us: int,
    message: Any,
) -> dict[str, Any]:
    """Apply one log message to its partition's streams; the answer as a JSON-able dict.

    Everything before the first ``await`` (validation and the rate limit) runs as soon as
    the message's task starts, and tasks start in the order they are made: log order.
    """
    base = {"stream_id": stream_id, "seq": sequence}
    try:
        check_stream_id(stream_id)
        if (message.headers or {}).get(OP_HEADER) == DELETE_OP:
            deleted = await registry.delete(stream_id)
            return {**base, "deleted": stream_status(stream_id, deleted, 0).model_dump()}
        samples, _ = parse_message(message.data)
        rows = np.array([s.row() for s in samples], dtype=np.float64)
        rate_limit.admit(stream_id, len(rows), log_us)
        applied = await registry.apply(stream_id, rows)
    except (Rejected, Refused) as error:
        rejected = Rejected.of(error)
        return {**base, **rejected.body(), "status": rejected.status}
    except Exception as error:  # the model failed (of any kind); nothing was committed, and
        # the partition goes on: a message left unanswered would stop it for good
        return {**base, "error": "internal", "reason": f"the model failed: {error}",
                "status": 500}  # fmt: skip
    return {**base, "estimates": [e.model_dump() for e in estimates_of(rows, applied)]}


def outgoing(
    stream_id: str, sequence: int, message: Any, answer: dict[str, Any]
) -> list[tuple[str, bytes, dict[str, str] | None]]:
    """(subject, payload, headers) of what answers one message: the stream's subject, the
    message's reply subject, and for a refusal the message as it came to the dead-letter
    subject, with the reason (its ``Nats-Msg-Id`` is the log sequence, so the dead-letter
    stream stores one copy of a message answered again within its duplicate window, 2 min)."""
    payload = json.dumps(answer).encode()
    out: list[tuple[str, bytes, dict[str, str] | None]] = [(soc_subject(stream_id), payload, None)]
    reply = (message.headers or {}).get(REPLY_HEADER)
    if reply:
        out.append((reply, payload, None))
    if "error" in answer:
        out.append((dead_subject(stream_id), message.data,
                    {"Bsoc-Error": answer["error"],
                     "Bsoc-Reason": answer["reason"][:REASON_HEADER_CHARS],
                     "Bsoc-Sequence": str(sequence), "Nats-Msg-Id": str(sequence)}))  # fmt: skip
    return out


class AnswerPublisher:
    """Publishes the answers, and sends the last ones again after a reconnection.

    Core NATS delivers at most once: what a worker wrote to its NATS node just before that
    node died (still in the socket, or in the node's routes to the subscribers) is lost,
    while the message it answers is applied and acknowledged and will not be delivered
    again, so nothing would ever answer it. The publisher therefore keeps what it sent in
    the last :data:`RESEND_WINDOW_S` before a disconnection and sends it again once
    reconnected: repeats, with the same log sequence, which every consumer of the answers
    already drops (the dead-letter stream by its message id).
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.nc: Any = None  # the worker's connection, once made (it calls the two handlers)
        self.metrics = metrics
        self.recent: deque[tuple[float, str, bytes, dict[str, str] | None]] = deque(
            maxlen=RESEND_MAX
        )
        self.disconnected_at: float | None = None

    async def publish(
        self, stream_id: str, sequence: int, message: Any, answer: dict[str, Any]
    ) -> None:
        now = time.monotonic()
        horizon = (now if self.disconnected_at is None else self.disconnected_at) - RESEND_WINDOW_S
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()
        for subject, payload, headers in outgoing(stream_id, sequence, message, answer):
            self.recent.append((now, subject, payload, headers))
            await self.nc.publish(subject, payload, headers=headers)

    async def on_disconnected(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()

    async def on_reconnected(self) -> None:
        """Send again what was sent from :data:`RESEND_WINDOW_S` before the disconnection on."""
        if self.disconnected_at is None:
            return
        horizon, self.disconnected_at = self.disconnected_at - RESEND_WINDOW_S, None
        again = [entry for entry in self.recent if entry[0] >= horizon]
        for _, subject, payload, headers in again:
            await self.nc.publish(subject, payload, headers=headers)
        self.metrics.answers_resent += len(again)
        log.warning("reconnected to NATS: %d answers of the last %g s sent again", len(again),
                    RESEND_WINDOW_S)  # fmt: skip
