"""What a worker answers for one message of the log, and where the answer goes.

Each message is answered on ``bsoc.soc.<token>`` (and on its ``Bsoc-Reply`` subject, for
the gateway and replay) with the estimates or the refusal, in the same kinds and statuses as
``bsoc serve``; a refusal also goes to the dead-letter subject with its reason. Answers are
at-least-once: after a takeover the messages since the last checkpoint are answered again,
with identical estimates and the same sequence number, which is how a consumer of the
answers drops the repeats.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bsoc.fleet.subjects import DELETE_OP, OP_HEADER, REPLY_HEADER, dead_subject, soc_subject
from bsoc.serve.errors import Refused
from bsoc.serve.rejections import Rejected
from bsoc.serve.schemas import check_stream_id
from bsoc.serve.service import estimates_of, stream_status
from bsoc.serve.socket import parse_message
from bsoc.serve.streams import StreamRegistry

REASON_HEADER_CHARS = 500


async def answer_message(
    registry: StreamRegistry, stream_id: str, sequence: int, message: Any
) -> dict[str, Any]:
    """Apply one log message to its partition's streams; the answer as a JSON-able dict."""
    base = {"stream_id": stream_id, "seq": sequence}
    try:
        check_stream_id(stream_id)
        if (message.headers or {}).get(OP_HEADER) == DELETE_OP:
            deleted = await registry.delete(stream_id)
            return {**base, "deleted": stream_status(stream_id, deleted, 0).model_dump()}
        samples, _ = parse_message(message.data)
        rows = np.array([s.row() for s in samples], dtype=np.float64)
        applied = await registry.apply(stream_id, rows)
    except (Rejected, Refused) as error:
        rejected = Rejected.of(error)
        return {**base, **rejected.body(), "status": rejected.status}
    except RuntimeError as error:  # the model failed; nothing was committed
        return {**base, "error": "internal", "reason": f"the model failed: {error}",
                "status": 500}  # fmt: skip
    return {**base, "estimates": [e.model_dump() for e in estimates_of(rows, applied)]}


async def publish_answer(
    nc: Any, stream_id: str, sequence: int, message: Any, answer: dict[str, Any]
) -> None:
    """Send the answer to the stream's subject and the message's reply subject; a refusal
    also goes, with the message as it came, to the dead-letter subject."""
    payload = json.dumps(answer).encode()
    await nc.publish(soc_subject(stream_id), payload)
    reply = (message.headers or {}).get(REPLY_HEADER)
    if reply:
        await nc.publish(reply, payload)
    if "error" in answer:
        await nc.publish(dead_subject(stream_id), message.data,
                         headers={"Bsoc-Error": answer["error"],
                                  "Bsoc-Reason": answer["reason"][:REASON_HEADER_CHARS],
                                  "Bsoc-Sequence": str(sequence)})  # fmt: skip
