"""``bsoc fleet worker``: owns partitions of the log and steps their streams.

Why recovery is exact. A partition's state is a pure function of its log: its streams are
changed only by its messages, in log order, through the same rules as ``bsoc serve``
(:class:`~bsoc.serve.streams.StreamRegistry`: all-or-nothing requests, time strictly
increasing per stream, gaps by sample time, a per-partition stream limit), and stepping a
stream alone or batched with others gives the same numbers. So a checkpoint that holds the
states after *exactly* the messages up to sequence S, restored and fed the messages after
S in order, continues exactly where an uninterrupted run would be. Three things make that so:

- one consumer per owned partition, in order, with no redelivery (``max_deliver`` 1); a
  missing delivery (its consumer sequence skips) restarts the consumer from the last
  applied sequence instead of applying out of order;
- a checkpoint is taken *between* messages: intake of the partition pauses, the messages
  already dispatched finish, then the states and the last dispatched sequence are copied
  together (a few milliseconds) and intake resumes while the copy is uploaded;
- a new owner starts from the stored checkpoint and replays the log after its sequence.

Each message is answered on ``bsoc.soc.<token>`` (and on its ``Bsoc-Reply`` subject, for
the gateway and replay) with the estimates or the refusal; a refusal also goes to the
dead-letter subject with its reason. Answers are at-least-once: after a takeover the
messages since the last checkpoint are answered again, with identical estimates and the
same sequence number, which is how a consumer of the answers drops the repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bsoc.estimator import SocEstimator
from bsoc.fleet.checkpoint import CheckpointStore
from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.leases import WORKER_PREFIX, LeaseView, lease_key, lease_value, worker_key
from bsoc.fleet.log import DAY_S, FleetSettings, ensure_log, pin_settings
from bsoc.fleet.subjects import (
    CHECKPOINTS_BUCKET,
    DELETE_OP,
    LEASES_BUCKET,
    OP_HEADER,
    QUERY,
    REPLY_HEADER,
    SAMPLES_STREAM,
    dead_subject,
    partition_subjects,
    soc_subject,
    stream_id_of,
    stream_of_stored,
)
from bsoc.heap import settle_heap
from bsoc.serve.batching import MicroBatcher
from bsoc.serve.errors import Refused
from bsoc.serve.metrics import LATENCY_BUCKETS_S, Histogram
from bsoc.serve.rejections import Rejected
from bsoc.serve.schemas import check_stream_id
from bsoc.serve.service import stream_list, stream_status
from bsoc.serve.socket import parse_message
from bsoc.serve.streams import StreamRegistry

log = logging.getLogger("bsoc.fleet")


@dataclass
class WorkerConfig:
    """Worker settings (each is a ``bsoc fleet worker`` option)."""

    target: NatsTarget = field(default_factory=NatsTarget)
    partitions: int = 8
    replicas: int = 1
    lease_s: float = 3.0
    checkpoint_interval_s: float = 10.0
    max_in_flight: int = 2048  # per partition: messages delivered but not yet applied
    gap_limit_s: float = 300.0
    gap_policy: str = "reset"
    max_streams_per_partition: int = 20_000
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
        )


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


@dataclass
class _Dispatched:
    sequence: int  # the message's stream sequence
    message: Any
    done: bool = False


class Partition:
    """One owned partition: its registry, its consumer, and its applied sequence."""

    def __init__(self, index: int, worker: Worker) -> None:
        self.index, self.worker = index, worker
        self.registry = StreamRegistry(
            worker.batcher,
            worker.estimator.initial_state(),
            gap_limit_s=worker.config.gap_limit_s,
            gap_policy=worker.config.gap_policy,
            max_streams=worker.config.max_streams_per_partition,
            history_len=worker.config.history_len,
        )
        self.applied_seq = 0  # every message up to here is applied (or refused), none after
        self.dispatched: deque[_Dispatched] = deque()
        self.idle = asyncio.Event()
        self.idle.set()
        self.open = asyncio.Event()
        self.open.set()
        self.subscription: Any = None
        self.expected_delivery = 1
        self.restarting = False
        self.last_checkpoint_monotonic = time.monotonic()
        self.lag = 0  # messages of the partition in the log not yet delivered
        self.tasks: set[asyncio.Task] = set()
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Restore the checkpoint and consume the log after it."""
        applied, arrays = await self.worker.checkpoints.load(self.index)
        if arrays is not None:
            self.registry.restore(arrays)
        self.applied_seq = applied
        self.last_checkpoint_monotonic = time.monotonic()
        await self._subscribe()
        self.started.set()
        log.info("partition %d: %d streams restored at sequence %d", self.index,
                 len(self.registry), applied)  # fmt: skip

    async def check_consumer(self) -> None:
        """Consume again if the server lost the consumer (a NATS node restarted or died)."""
        from nats.js.errors import NotFoundError

        if self.subscription is None or self.restarting:
            return
        try:
            await self.subscription.consumer_info()
        except NotFoundError:
            log.warning("partition %d: the consumer is gone; consuming again after sequence %d",
                        self.index, self.applied_seq)  # fmt: skip
            self._restart_consumer()

    async def _subscribe(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied_seq + 1,
            ack_policy=AckPolicy.ALL,
            max_deliver=1,
            ack_wait=3600.0,
            max_ack_pending=self.worker.config.max_in_flight,
            inactive_threshold=max(10.0, 3 * self.worker.config.lease_s),
            mem_storage=True,
            num_replicas=1,
        )
        self.expected_delivery = 1
        self.subscription = await self.worker.js.subscribe(
            partition_subjects(self.index),
            stream=SAMPLES_STREAM,
            cb=self._on_message,
            config=config,
            manual_ack=True,
            pending_msgs_limit=4 * self.worker.config.max_in_flight,
            pending_bytes_limit=-1,
        )

    async def _on_message(self, message: Any) -> None:
        """Called by nats-py for each delivery, one at a time, in log order."""
        if self.restarting or not (message.reply or "").startswith("$JS.ACK."):
            return  # a status message (heartbeat, flow control), or one of a dropped consumer
        meta = message.metadata
        if meta.sequence.consumer != self.expected_delivery:
            self.worker.metrics.redeliveries += 1
            self._restart_consumer()
            return
        self.expected_delivery += 1
        self.lag = meta.num_pending
        if not self.open.is_set():
            await self.open.wait()
        item = _Dispatched(meta.sequence.stream, message)
        self.dispatched.append(item)
        self.idle.clear()
        task = asyncio.get_running_loop().create_task(self._handle(item))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _restart_consumer(self) -> None:
        """A delivery went missing: drop what follows and consume again after the last applied."""
        self.restarting = True

        async def restart() -> None:
            await self.idle.wait()
            await self._unsubscribe()
            self.restarting = False
            await self._subscribe()

        asyncio.get_running_loop().create_task(restart())

    async def _handle(self, item: _Dispatched) -> None:
        started = time.perf_counter()
        partition, stream_id = stream_of_stored(item.message.subject)
        answer = await self._answer(stream_id, item)
        payload = json.dumps(answer).encode()
        nc = self.worker.nc
        await nc.publish(soc_subject(stream_id), payload)
        reply = (item.message.headers or {}).get(REPLY_HEADER)
        if reply:
            await nc.publish(reply, payload)
        if "error" in answer:
            await nc.publish(dead_subject(stream_id), item.message.data,
                             headers={"Bsoc-Error": answer["error"],
                                      "Bsoc-Reason": answer["reason"][:500],
                                      "Bsoc-Sequence": str(item.sequence)})  # fmt: skip
        self.worker.metrics.observe(answer, time.perf_counter() - started)
        item.done = True
        self._advance()

    async def _answer(self, stream_id: str, item: _Dispatched) -> dict[str, Any]:
        base = {"stream_id": stream_id, "seq": item.sequence}
        try:
            check_stream_id(stream_id)
            if (item.message.headers or {}).get(OP_HEADER) == DELETE_OP:
                deleted = await self.registry.delete(stream_id)
                return {**base, "deleted": stream_status(stream_id, deleted, 0).model_dump()}
            samples, _ = parse_message(item.message.data)
            rows = np.array([s.row() for s in samples], dtype=np.float64)
            applied = await self.registry.apply(stream_id, rows)
        except (Rejected, Refused) as error:
            rejected = Rejected.of(error)
            return {**base, **rejected.body(), "status": rejected.status}
        except RuntimeError as error:  # the model failed; nothing was committed
            return {**base, "error": "internal", "reason": f"the model failed: {error}",
                    "status": 500}  # fmt: skip
        estimates = [
            {"time_s": float(t), "soc": float(s), "gap": bool(g)}
            for t, s, g in zip(rows[:, 0], applied.soc, applied.gap)
        ]
        return {**base, "estimates": estimates}

    def _advance(self) -> None:
        """Move the applied sequence over the finished prefix and acknowledge it."""
        last = None
        while self.dispatched and self.dispatched[0].done:
            last = self.dispatched.popleft()
        if last is None:
            return
        self.applied_seq = last.sequence
        if not self.dispatched:
            self.idle.set()
        task = asyncio.get_running_loop().create_task(last.message.ack())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def capture(self) -> tuple[int, dict[str, np.ndarray]]:
        """(applied sequence, states) taken between two messages: intake pauses meanwhile."""
        self.open.clear()
        try:
            await self.idle.wait()
            return self.applied_seq, self.registry.export()
        finally:
            self.open.set()

    async def checkpoint(self) -> None:
        sequence, arrays = await self.capture()
        started = time.perf_counter()
        size = await self.worker.checkpoints.save(self.index, sequence, arrays)
        self.last_checkpoint_monotonic = time.monotonic()
        self.worker.metrics.observe_checkpoint(time.perf_counter() - started, size)

    async def _unsubscribe(self) -> None:
        if self.subscription is not None:
            try:
                await self.subscription.unsubscribe()
            except Exception as error:  # the consumer may be gone already; it expires anyway
                log.debug("partition %d: unsubscribe failed: %s", self.index, error)
            self.subscription = None

    async def stop(self) -> None:
        """Stop taking messages and let the dispatched ones finish."""
        self.open.clear()
        await self._unsubscribe()
        await self.idle.wait()


class WorkerMetrics:
    """What the worker reports through ``bsoc.query.metrics`` (the gateway's /metrics)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.samples_total = 0
        self.messages_total = 0
        self.refused: Counter[str] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.checkpoints_total = 0
        self.checkpoint_seconds = Histogram((0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0))
        self.checkpoint_bytes = 0
        self.redeliveries = 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=4096)

    def observe(self, answer: dict[str, Any], latency_s: float) -> None:
        self.messages_total += 1
        self.latency.observe(latency_s)
        if "error" in answer:
            self.refused[answer["error"]] += 1
        elif "estimates" in answer:
            n = len(answer["estimates"])
            self.samples_total += n
            now = time.monotonic()
            if self.recent and now - self.recent[-1][0] < 0.25:
                self.recent[-1] = (self.recent[-1][0], self.recent[-1][1] + n)
            else:
                self.recent.append((now, n))

    def observe_checkpoint(self, seconds: float, size: int) -> None:
        self.checkpoints_total += 1
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_bytes = size

    def samples_per_s(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = sum(n for t, n in self.recent if t > now - window_s)
        return recent / min(window_s, max(now - self.started, 1.0))


class Worker:
    """Owns partitions by lease, steps their streams, checkpoints them, answers queries."""

    def __init__(self, estimator: SocEstimator, model: dict[str, Any], config: WorkerConfig):
        self.estimator, self.model, self.config = estimator, model, config
        self.id = config.worker_id or new_worker_id()
        self.metrics = WorkerMetrics()
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
        self.nc = await connect(self.config.target, f"bsoc-worker-{self.id}")
        try:
            self.js = self.nc.jetstream(timeout=10.0)
            await ensure_log(self.js, self.config.partitions, self.config.replicas,
                             self.config.retention_s)  # fmt: skip
            await pin_settings(self.js, self.config.settings(self.model))
            self.kv = await self.js.key_value(LEASES_BUCKET)
            self.checkpoints = CheckpointStore(
                await self.js.object_store(CHECKPOINTS_BUCKET), self.model
            )
            self.batcher = MicroBatcher(
                self.estimator, max_wait_s=self.config.batch_wait_s, max_jobs=self.config.max_batch
            )
            self.batcher.start()
            await self.nc.subscribe(f"{QUERY}.fleet", cb=self._on_fleet_query)
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
            await self.partitions[index].check_consumer()
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
        partition = self.partitions[index] = Partition(index, self)
        self._starts[index] = asyncio.get_running_loop().create_task(self._start(partition))

    async def _start(self, partition: Partition) -> None:
        try:
            await partition.start()
        except Exception as error:
            self.failure = error  # e.g. a damaged checkpoint: the worker stops with it
            self._stopping.set()
            return
        self.query_subscriptions[partition.index] = await self.nc.subscribe(
            f"{QUERY}.{partition.index}.stream.*", cb=self._on_stream_query
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
        """``bsoc.query.<p>.stream.<token>``: the stream's status (history N in the body)."""
        index, subject_token = int(message.subject.split(".")[2]), message.subject.split(".")[4]
        partition = self.partitions.get(index)
        stream_id = stream_id_of(subject_token)
        if partition is None:
            return
        try:
            history = int(message.data or 0)
            status = stream_status(stream_id, partition.registry.get(stream_id), history)
            answer: dict[str, Any] = {"status": status.model_dump()}
        except (Rejected, Refused) as error:
            rejected = Rejected.of(error)
            answer = {**rejected.body(), "status": rejected.status}
        await message.respond(json.dumps(answer).encode())

    async def _on_fleet_query(self, message: Any) -> None:
        """``bsoc.query.fleet``: this worker's partitions, streams (by prefix) and metrics."""
        try:
            request = json.loads(message.data or b"{}")
        except ValueError:
            request = {}
        prefix, limit = str(request.get("prefix", "")), int(request.get("limit", 0))
        chosen = sorted(
            (i, s)
            for p in self.partitions.values()
            for i, s in p.registry
            if i.startswith(prefix)
        )
        now = time.monotonic()
        answer = {
            "worker": self.id,
            "partitions": {
                str(i): {
                    "streams": len(p.registry),
                    "applied_seq": p.applied_seq,
                    "lag": p.lag,
                    "in_flight": len(p.dispatched),
                    "checkpoint_age_s": now - p.last_checkpoint_monotonic,
                }
                for i, p in sorted(self.partitions.items())
            },
            "streams": stream_list(chosen, limit).model_dump() if limit else None,
            "metrics": self._metrics(),
        }
        await message.respond(json.dumps(answer).encode())

    def _metrics(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "samples_total": m.samples_total,
            "messages_total": m.messages_total,
            "refused": dict(m.refused),
            "samples_per_s": m.samples_per_s(),
            "latency": {"buckets": list(m.latency.buckets), "counts": m.latency.counts.tolist(),
                        "sum": m.latency.total},  # fmt: skip
            "checkpoints_total": m.checkpoints_total,
            "checkpoint_bytes": m.checkpoint_bytes,
            "redeliveries": m.redeliveries,
        }

