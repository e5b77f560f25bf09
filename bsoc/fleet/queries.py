"""The fleet's queries (core NATS request/reply), both sides: what workers answer, how to ask.

- ``bsoc.query.<p>.stream.<token>``: the owner of partition ``p`` answers one stream's
  status (the history length in the body), as ``GET /v1/streams/{id}`` shows it.
- ``bsoc.query.fleet``: every worker answers with its partitions (streams, applied sequence,
  lag, in-flight messages, checkpoint age), its streams by prefix and its metrics; the
  asker gathers until every partition is covered or :data:`GATHER_TIMEOUT_S` has passed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.context import InFlightLimit
from bsoc.fleet.metrics import WorkerMetrics
from bsoc.fleet.subjects import QUERY, stream_id_of
from bsoc.serve.errors import Refused
from bsoc.serve.rejections import Rejected
from bsoc.serve.service import stream_list, stream_status

if TYPE_CHECKING:
    from bsoc.fleet.partition import Partition

GATHER_TIMEOUT_S = 1.0
FLEET_QUERY = f"{QUERY}.fleet"


def stream_query_subject(partition: int) -> str:
    """What the owner of ``partition`` listens on for stream queries."""
    return f"{QUERY}.{partition}.stream.*"


def stream_answer(partitions: Mapping[int, Partition], subject: str, data: bytes) -> dict | None:
    """The answer to a stream query; None when this worker does not own the partition."""
    _, _, index, _, subject_token = subject.split(".")
    partition = partitions.get(int(index))
    if partition is None:
        return None
    stream_id = stream_id_of(subject_token)
    try:
        history = int(data or 0)
        return {"status": stream_status(stream_id, partition.registry.get(stream_id),
                                        history).model_dump()}  # fmt: skip
    except (Rejected, Refused) as error:
        rejected = Rejected.of(error)
        return {**rejected.body(), "status": rejected.status}


def fleet_answer(
    worker_id: str,
    partitions: Mapping[int, Partition],
    metrics: WorkerMetrics,
    in_flight: InFlightLimit,
    data: bytes,
) -> dict[str, Any]:
    """One worker's answer to ``bsoc.query.fleet`` (``{"prefix", "limit"}`` asks for streams)."""
    try:
        request = json.loads(data or b"{}")
    except ValueError:
        request = {}
    prefix, limit = str(request.get("prefix", "")), int(request.get("limit", 0))
    chosen = sorted(
        (i, s) for p in partitions.values() for i, s in p.registry if i.startswith(prefix)
    )
    now = time.monotonic()
    return {
        "worker": worker_id,
        "partitions": {
            str(i): {
                "streams": len(p.registry),
                "applied_seq": p.applied_seq,
                "lag": p.lag,
                "in_flight": len(p.dispatched),
                "checkpoint_age_s": now - p.last_checkpoint_monotonic,
            }
            for i, p in sorted(partitions.items())
        },
        "streams": stream_list(chosen, limit).model_dump() if limit else None,
        "metrics": {**metrics.to_json(), "in_flight": in_flight.count,
                    "in_flight_peak": in_flight.peak, "in_flight_limit": in_flight.limit},  # fmt: skip
    }


async def query_fleet(
    nc: Any, partitions: int, request: dict[str, Any] | None = None
) -> tuple[list[dict], list[int]]:
    """Every worker's answer to ``bsoc.query.fleet``, and the partitions no one owns.

    Gathers until every partition has answered or :data:`GATHER_TIMEOUT_S` has passed.
    """
    answers: list[dict] = []
    covered: set[int] = set()
    complete = asyncio.Event()
    inbox = nc.new_inbox()

    async def collect(message: Any) -> None:
        answer = json.loads(message.data)
        answers.append(answer)
        covered.update(int(p) for p in answer["partitions"])
        if len(covered) >= partitions:
            complete.set()

    subscription = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(FLEET_QUERY, json.dumps(request or {}).encode(), reply=inbox)
        try:
            await asyncio.wait_for(complete.wait(), GATHER_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
    finally:
        await subscription.unsubscribe()
    return answers, sorted(set(range(partitions)) - covered)


async def ask_fleet(target: NatsTarget, partitions: int) -> tuple[list[dict], list[int]]:
    """:func:`query_fleet` over a connection of its own (for status commands and tests)."""
    nc = await connect(target, "bsoc-fleet-status")
    try:
        return await query_fleet(nc, partitions)
    finally:
        await nc.close()

