"""``bsoc fleet worker``: owns partitions of the log by lease, and checkpoints them.

The worker is the ownership half of the fleet: it joins (creating or checking the log and
pinning the fleet's settings), renews, takes and hands back partition leases every third of
the lease time (:mod:`.leases`), starts each partition it takes from its checkpoint
(:mod:`.partition`, which consumes, steps and answers), checkpoints them every
``--checkpoint-interval``, and answers the fleet's queries (:mod:`.queries`). On SIGTERM it
checkpoints and hands everything back, so the next owner has nothing to replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from bsoc.errors import ConfigError
from bsoc.estimator import SocEstimator
from bsoc.fleet.answers import AnswerPublisher
from bsoc.fleet.checkpoint import CheckpointStore
from bsoc.fleet.connection import connect
from bsoc.fleet.context import InFlightLimit, WorkerConfig, WorkerContext
from bsoc.fleet.leases import WORKER_PREFIX, LeaseView, lease_key, lease_value, worker_key
from bsoc.fleet.log import ensure_log, pin_settings, when_jetstream_answers
from bsoc.fleet.metrics import WorkerMetrics
from bsoc.fleet.partition import Partition
from bsoc.fleet.queries import FLEET_QUERY, fleet_answer, stream_answer, stream_query_subject
from bsoc.fleet.subjects import CHECKPOINTS_BUCKET, LEASES_BUCKET
from bsoc.heap import settle_heap
from bsoc.serve.batching import MicroBatcher

log = logging.getLogger("bsoc.fleet")


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Worker:
    """Owns partitions by lease, steps their streams, checkpoints them, answers queries."""

    def __init__(self, estimator: SocEstimator, model: dict[str, Any], config: WorkerConfig):
        self.estimator, self.model, self.config = estimator, model, config
        self.id = config.worker_id or new_worker_id()
        self.metrics = WorkerMetrics()
        self.in_flight = InFlightLimit(config.max_worker_in_flight)
        self.partitions: dict[int, Partition] = {}
        self.view = LeaseView(config.partitions, config.lease_s, self.id)
        self.revisions: dict[int, int] = {}  # our lease revision per owned partition
        self.query_subscriptions: dict[int, Any] = {}
        self._stopping = asyncio.Event()
        self._checkpoint_lock = asyncio.Lock()
        self._starts: dict[int, asyncio.Task] = {}
        self.failure: Exception | None = None
        # One step now, so that loading the model's kernel is not in the first messages.
        estimator.step_batch(np.array([[0.0, 3.7, 0.0, 25.0]]), estimator.initial_state()[None])

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Join the fleet and work until :meth:`request_stop`; then hand everything back."""
        settle_heap()
        self.answers = AnswerPublisher(self.metrics)
        self.nc = await connect(self.config.target, f"bsoc-worker-{self.id}",
                                disconnected_cb=self.answers.on_disconnected,
                                reconnected_cb=self.answers.on_reconnected)  # fmt: skip
        self.answers.nc = self.nc
        try:
            self.js = self.nc.jetstream(timeout=10.0)
            checkpoints = await when_jetstream_answers(self._join_log, self.config.target.url)
            self.batcher = MicroBatcher(
                self.estimator, max_wait_s=self.config.batch_wait_s, max_jobs=self.config.max_batch
            )
            self.batcher.start()
            self.context = WorkerContext(self.config, self.estimator, self.batcher, self.nc,
                                         self.js, checkpoints, self.metrics, self.in_flight,
                                         self.answers)  # fmt: skip
            await self.nc.subscribe(FLEET_QUERY, cb=self._on_fleet_query)
            if ready is not None:
                ready.set()
            await asyncio.gather(self._lease_loop(), self._checkpoint_loop())
            if self.failure is None:
                await self._hand_back(list(self.partitions))
            await self.kv.delete(worker_key(self.id))
            await self.batcher.stop()
        finally:
            await self.nc.close()
        if self.failure is not None:
            raise self.failure

    async def _join_log(self) -> CheckpointStore:
        """Create or check the log and pin the settings; safe to repeat."""
        await ensure_log(self.js, self.config.partitions, self.config.replicas,
                         self.config.retention_s)  # fmt: skip
        await pin_settings(self.js, self.config.settings(self.model))
        self.kv = await self.js.key_value(LEASES_BUCKET)
        return CheckpointStore(await self.js.object_store(CHECKPOINTS_BUCKET), self.model)

    def request_stop(self) -> None:
        self._stopping.set()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """True when asked to stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def _lease_loop(self) -> None:
        """Renew, take and hand back leases every third of the lease time, until stopped."""
        while True:
            try:
                await self._lease_round()
            except Exception as error:  # NATS unreachable for a moment: the next round retries
                log.warning("lease round failed (%s: %s)", type(error).__name__, error)
            if await self._sleep_or_stop(self.config.lease_s / 3):
                return

    async def _lease_round(self) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        await self.kv.put(worker_key(self.id), json.dumps(self._heartbeat()).encode())
        await self._read_leases()
        for index in list(self.partitions):
            try:
                self.revisions[index] = await self.kv.update(
                    lease_key(index), lease_value(self.id), last=self.revisions[index]
                )
            except KeyWrongLastSequenceError:
                log.warning("partition %d: lease lost to another worker", index)
                await self._drop(index)
                continue
            self.partitions[index].check_consumer_soon()
        take, give = self.view.plan(set(self.partitions), time.monotonic())
        await self._hand_back(give)
        for index in take:
            if not self._stopping.is_set():
                await self._take(index)

    async def _read_leases(self) -> None:
        """Read every lease and heartbeat key now (a KV watcher lags behind, or stalls, on a
        busy machine, and a lease judged on an old revision could never be taken over)."""
        from nats.js.errors import KeyNotFoundError, NoKeysError

        try:
            heartbeats = [k for k in await self.kv.keys() if k.startswith(WORKER_PREFIX)]
        except NoKeysError:
            heartbeats = []
        for key in [lease_key(i) for i in range(self.config.partitions)] + heartbeats:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                self.view.keys.pop(key, None)  # absent or deleted: free
                continue
            self.view.observe(entry.key, entry.revision, entry.value, time.monotonic())

    async def _take(self, index: int) -> None:
        """Take the lease, then restore and start the partition in the background (renewals
        of the other leases must not wait for a large checkpoint to load)."""
        from nats.js.errors import KeyWrongLastSequenceError

        seen = self.view.keys.get(lease_key(index))
        try:
            if seen is None or seen.value is None:
                revision = await self.kv.create(lease_key(index), lease_value(self.id))
            else:
                revision = await self.kv.update(
                    lease_key(index), lease_value(self.id), last=seen.revision
                )
        except KeyWrongLastSequenceError:
            return  # another worker was quicker
        self.revisions[index] = revision
        partition = self.partitions[index] = Partition(index, self.context)
        self._starts[index] = asyncio.get_running_loop().create_task(self._start(partition))

    async def _start(self, partition: Partition) -> None:
        """Start the partition; again while NATS cannot answer (a leader election), but stop
        the worker for a checkpoint it cannot use (damaged, or another model's)."""
        while True:
            try:
                await partition.start()
                break
            except ConfigError as error:
                self.failure = error
                self._stopping.set()
                return
            except Exception as error:
                log.warning("partition %d: cannot start yet (%s: %s); retrying", partition.index,
                            type(error).__name__, error)  # fmt: skip
                if await self._sleep_or_stop(self.config.lease_s / 3) or partition.stopped:
                    return
        self.query_subscriptions[partition.index] = await self.nc.subscribe(
            stream_query_subject(partition.index), cb=self._on_stream_query
        )

    async def _drop(self, index: int) -> None:
        """Forget a partition at once (its lease is gone)."""
        partition = self.partitions.pop(index, None)
        self.revisions.pop(index, None)
        starting = self._starts.pop(index, None)
        if starting is not None:
            await asyncio.wait([starting])
        subscription = self.query_subscriptions.pop(index, None)
        if subscription is not None:
            await subscription.unsubscribe()
        if partition is not None:
            await partition.stop()

    async def _hand_back(self, indices: list[int]) -> None:
        """Checkpoint, then release: the next owner starts with nothing to replay."""
        for index in indices:
            partition = self.partitions.get(index)
            if partition is None:
                continue
            starting = self._starts.get(index)
            if starting is not None:
                await asyncio.wait([starting])
            if partition.started.is_set():
                await partition.stop()
                async with self._checkpoint_lock:
                    await partition.checkpoint()
            revision = self.revisions.get(index)
            await self._drop(index)
            try:
                await self.kv.delete(lease_key(index), last=revision)
            except Exception as error:  # taken meanwhile: fine, it is someone else's now
                log.debug("partition %d: release failed: %s", index, error)

    async def _checkpoint_loop(self) -> None:
        if self.config.checkpoint_interval_s <= 0:
            await self._stopping.wait()
            return
        while not await self._sleep_or_stop(self.config.checkpoint_interval_s):
            for index in list(self.partitions):
                partition = self.partitions.get(index)
                if partition is None or not partition.started.is_set():
                    continue
                try:
                    async with self._checkpoint_lock:
                        await partition.checkpoint()
                except Exception as error:  # the store is unavailable: keep serving, retry
                    log.warning("partition %d: checkpoint failed (%s: %s)", index,
                                type(error).__name__, error)  # fmt: skip

    def _heartbeat(self) -> dict[str, Any]:
        return {
            "partitions": sorted(self.partitions),
            "streams": sum(len(p.registry) for p in self.partitions.values()),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    async def _on_stream_query(self, message: Any) -> None:
        answer = stream_answer(self.partitions, message.subject, message.data)
        if answer is not None:
            await message.respond(json.dumps(answer).encode())

    async def _on_fleet_query(self, message: Any) -> None:
        answer = fleet_answer(self.id, self.partitions, self.metrics, self.in_flight, message.data)
        await message.respond(json.dumps(answer).encode())
