"""What every partition of one worker shares: its settings, its NATS connection, the model's
micro-batcher, the checkpoint store, the metrics and the bound on messages in flight.

A partition is handed this context, not the worker, so it depends on what it uses and the
worker (which owns partitions) stays above it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bsoc.estimator import SocEstimator
from bsoc.fleet.answers import AnswerPublisher
from bsoc.fleet.checkpoint import CheckpointStore
from bsoc.fleet.connection import NatsTarget
from bsoc.fleet.log import DAY_S, FleetSettings
from bsoc.fleet.metrics import WorkerMetrics
from bsoc.serve.batching import MicroBatcher


@dataclass
class WorkerConfig:
    """Worker settings (each is a ``bsoc fleet worker`` option)."""

    target: NatsTarget = field(default_factory=NatsTarget)
    partitions: int = 8
    replicas: int = 1
    lease_s: float = 3.0
    checkpoint_interval_s: float = 10.0
    max_in_flight: int = 2048  # per partition: messages delivered but not yet applied
    max_worker_in_flight: int = 8192  # all partitions: messages being applied at once
    gap_limit_s: float = 300.0
    gap_policy: str = "reset"
    max_streams_per_partition: int = 20_000
    max_stream_rate_hz: float = 0.0  # per stream, by the log's clock; 0: no limit
    stream_burst: int = 60  # samples a stream may send at once within its rate
    batch_wait_s: float = 0.003
    max_batch: int = 4096
    history_len: int = 60
    retention_s: float = DAY_S
    worker_id: str = ""

    def settings(self, model: dict[str, Any]) -> FleetSettings:
        return FleetSettings(
            model=model,
            partitions=self.partitions,
            gap_limit_s=self.gap_limit_s,
            gap_policy=self.gap_policy,
            max_streams_per_partition=self.max_streams_per_partition,
            max_stream_rate_hz=self.max_stream_rate_hz,
            stream_burst=self.stream_burst,
        )


class InFlightLimit:
    """At most ``limit`` messages being applied at once in this worker, over all its
    partitions: a partition whose message finds the limit reached waits (its consumer, and
    then the server, hold the rest), so a burst costs log storage, not worker memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.peak = limit, 0, 0
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        await self._slots.acquire()
        self.count += 1
        self.peak = max(self.peak, self.count)

    def release(self) -> None:
        self.count -= 1
        self._slots.release()


@dataclass
class WorkerContext:
    """The connection and shared parts a worker hands each of its partitions."""

    config: WorkerConfig
    estimator: SocEstimator
    batcher: MicroBatcher
    nc: Any
    js: Any
    checkpoints: CheckpointStore
    metrics: WorkerMetrics
    in_flight: InFlightLimit
    answers: AnswerPublisher
