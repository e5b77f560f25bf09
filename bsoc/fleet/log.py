"""The JetStream objects a fleet lives in, created (or checked) by every process that joins.

- ``BSOC_SAMPLES``: the samples log, ``bsoc.samples.*`` in, stored as
  ``bsoc.part.<p>.<token>`` by the server's own partition transform (:mod:`.subjects`).
- ``BSOC_DEAD``: samples that failed validation or the stream rules, with the reason.
- ``bsoc_fleet`` (key-value): the fleet's settings, partition leases, worker heartbeats.
- ``bsoc_checkpoints`` (object store): one checkpoint per partition.

The settings key pins what every worker must agree on (the model, the partition count, the
stream rules): a worker started with anything else is refused with one line, because its
states would not continue the others'. The partition count is also fixed by the log's
transform, so changing it needs a new log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from bsoc.errors import ConfigError
from bsoc.fleet.leases import SETTINGS_KEY
from bsoc.fleet.subjects import (
    CHECKPOINTS_BUCKET,
    DEAD_LETTER,
    DEAD_STREAM,
    LEASES_BUCKET,
    SAMPLES_STREAM,
    partition_transform,
)

DAY_S = 86_400.0
JETSTREAM_WAIT_S = 60.0
T = TypeVar("T")
log = logging.getLogger("bsoc.fleet")


class FleetError(ConfigError):
    """The log or the fleet's settings cannot be used as asked (no fleet, another model...)."""


@dataclass(frozen=True)
class FleetSettings:
    """What every worker of one fleet must share, stored once in the fleet's bucket."""

    model: dict[str, Any]
    partitions: int
    gap_limit_s: float
    gap_policy: str
    max_streams_per_partition: int
    max_stream_rate_hz: float = 0.0  # defaults: what a fleet pinned before rate limits had
    stream_burst: int = 60

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FleetSettings:
        return cls(**json.loads(data))


async def ensure_log(js: Any, partitions: int, replicas: int, retention_s: float) -> None:
    """Create the stream, dead-letter stream and buckets, or check the existing log's partitions."""
    from nats.js.api import StorageType, StreamConfig, SubjectTransform
    from nats.js.errors import NotFoundError

    source, destination = partition_transform(partitions)
    try:
        info = await js.stream_info(SAMPLES_STREAM)
    except NotFoundError:
        info = None
    if info is not None:
        existing = info.config.subject_transform
        if existing is None or existing.dest != destination:
            found = existing.dest if existing is not None else "no partitioning"
            raise FleetError(
                f"the log {SAMPLES_STREAM} is partitioned as {found!r}, not into {partitions} "
                "partitions",
                remedy="start the workers with the log's --partitions, or use a new NATS store",
            )
    else:
        await js.add_stream(
            StreamConfig(
                name=SAMPLES_STREAM,
                subjects=[source],
                subject_transform=SubjectTransform(src=source, dest=destination),
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_age=retention_s,
                description="bsoc cell samples, partitioned by stream id",
            )
        )
    await js.add_stream(
        StreamConfig(
            name=DEAD_STREAM,
            subjects=[f"{DEAD_LETTER}.*"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=7 * DAY_S,
            description="bsoc samples refused by a worker, with the reason",
        )
    )
    await js.create_key_value(bucket=LEASES_BUCKET, history=1, replicas=replicas)
    await js.create_object_store(bucket=CHECKPOINTS_BUCKET, replicas=replicas)


async def when_jetstream_answers(request: Callable[[], Awaitable[T]], url: str,
                                 wait_s: float = JETSTREAM_WAIT_S) -> T:  # fmt: skip
    """``request()``, repeated while JetStream cannot answer yet; a FleetError after ``wait_s``.

    A cluster that has just started, or has just lost a node, elects its leaders for a few
    seconds, during which its API times out or answers 503 (a publish to a bucket whose
    stream has no leader yet answers it too): workers started together with
    their NATS must wait for it, not die. ``request`` must be safe to repeat.
    """
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await request()
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError,
                ServiceUnavailableError) as error:
            why = f"{type(error).__name__}: {error}"
            if time.monotonic() > deadline:
                raise FleetError(
                    f"the JetStream of the NATS at {url} did not answer within {wait_s:g} s "
                    f"({why})",
                    remedy="check that its nodes are up and a majority of them can reach "
                    "each other (their nats.log)",
                ) from None
            log.warning("JetStream not answering yet (%s); retrying", why)
            await asyncio.sleep(0.5)


async def pin_settings(js: Any, settings: FleetSettings) -> FleetSettings:
    """Record ``settings`` as the fleet's, or refuse them if the fleet already has others."""
    from nats.js.errors import KeyWrongLastSequenceError

    kv = await js.key_value(LEASES_BUCKET)
    try:
        await kv.create(SETTINGS_KEY, settings.to_json())
        return settings
    except KeyWrongLastSequenceError:
        pass
    pinned = FleetSettings.from_json((await kv.get(SETTINGS_KEY)).value)
    if pinned != settings:
        differences = ", ".join(
            f"{name} {getattr(pinned, name)!r} (this worker: {getattr(settings, name)!r})"
            for name in (f.name for f in fields(FleetSettings))
            if getattr(pinned, name) != getattr(settings, name)
        )
        raise FleetError(
            f"this fleet runs with {differences}",
            remedy="start the worker with the fleet's model and options, or use a new NATS store",
        )
    return pinned


async def read_settings(js: Any, url: str) -> FleetSettings:
    """The settings of the fleet behind ``url``; a one-line error if no worker ever started."""
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

    try:
        kv = await js.key_value(LEASES_BUCKET)
        entry = await kv.get(SETTINGS_KEY)
    except (BucketNotFoundError, KeyNotFoundError, NotFoundError):
        raise FleetError(
            f"no bsoc fleet at {url} (no worker has started there)",
            remedy="start 'bsoc fleet worker --nats URL' (or 'bsoc fleet up') first",
        ) from None
    return FleetSettings.from_json(entry.value)
