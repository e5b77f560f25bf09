"""One owned partition of the log: its consumer, its streams and its applied sequence.

Why recovery is exact. A partition's state is a pure function of its log: its streams are
changed only by its messages, in log order, through the same rules as ``bsoc serve``
(:class:`~bsoc.serve.streams.StreamRegistry`: all-or-nothing requests, time strictly
increasing per stream, gaps by sample time, a per-partition stream limit; and the fleet's
per-stream rate limit, counted by the log's own timestamps, :mod:`.ratelimit`), and stepping
a stream alone or batched with others gives the same numbers. So a checkpoint that holds the
states after *exactly* the messages up to sequence S, restored and fed the messages after
S in order, continues exactly where an uninterrupted run would be. Three things make that so:

- one consumer per owned partition, in order, with no redelivery (``max_deliver`` 1); a
  missing delivery (its consumer sequence skips) restarts the consumer from the last
  applied sequence instead of applying out of order;
- a checkpoint is taken *between* messages: intake of the partition pauses, the messages
  already dispatched finish, then the states and the last dispatched sequence are copied
  together (a few milliseconds) and intake resumes while the copy is uploaded;
- a new owner starts from the stored checkpoint and replays the log after its sequence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bsoc.fleet.answers import answer_message
from bsoc.fleet.checkpoint import Checkpoint
from bsoc.fleet.context import WorkerContext
from bsoc.fleet.ratelimit import StreamRateLimit, log_time_us
from bsoc.fleet.subjects import SAMPLES_STREAM, partition_subjects, stream_of_stored
from bsoc.serve.streams import StreamRegistry

log = logging.getLogger("bsoc.fleet")
CONSUMER_CHECKS = 2  # consumer checks without an answer, in a row, before consuming again


@dataclass
class _Dispatched:
    sequence: int  # the message's stream sequence
    log_us: int  # when the log stored it (microseconds since 1970)
    message: Any
    done: bool = False


class Partition:
    """One owned partition: its registry, its consumer, and its applied sequence."""

    def __init__(self, index: int, context: WorkerContext) -> None:
        self.index, self.context = index, context
        config = context.config
        self.registry = StreamRegistry(
            context.batcher,
            context.estimator.initial_state(),
            gap_limit_s=config.gap_limit_s,
            gap_policy=config.gap_policy,
            max_streams=config.max_streams_per_partition,
            history_len=config.history_len,
        )
        self.rate_limit = StreamRateLimit(config.max_stream_rate_hz, config.stream_burst)
        self.applied_seq = 0  # every message up to here is applied (or refused), none after
        self.applied_log_us = 0  # the log time of that message
        self.dispatched: deque[_Dispatched] = deque()
        self.idle = asyncio.Event()
        self.idle.set()
        self.open = asyncio.Event()
        self.open.set()
        self.subscription: Any = None
        self.generation = 0  # which subscription is the current one
        self.expected_delivery = 1
        self.restarting = False
        self.stopped = False
        self.checking: asyncio.Task | None = None
        self.unanswered_checks = 0  # consumer checks in a row that got no answer
        self.last_checkpoint_monotonic = time.monotonic()
        self.lag = 0  # messages of the partition in the log not yet delivered
        self.tasks: set[asyncio.Task] = set()
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Restore the checkpoint and consume the log after it."""
        checkpoint = await self.context.checkpoints.load(self.index)
        if checkpoint.arrays is not None:
            self.registry.restore(checkpoint.arrays)
        self.rate_limit.restore(checkpoint.rate_due_us)
        self.applied_seq = applied = checkpoint.applied_seq
        self.last_checkpoint_monotonic = time.monotonic()
        await self._subscribe()
        self.started.set()
        log.info("partition %d: %d streams restored at sequence %d", self.index,
                 len(self.registry), applied)  # fmt: skip

    def check_consumer_soon(self) -> None:
        """Check the consumer in the background (the lease round must not wait for it)."""
        if self.checking is None or self.checking.done():
            self.checking = asyncio.get_running_loop().create_task(self.check_consumer())

    async def check_consumer(self) -> None:
        """Consume again if the server lost the consumer: it is gone (a NATS node restarted),
        or it has not answered :data:`CONSUMER_CHECKS` times in a row (its node died: a
        consumer has one replica, and asking for it then times out instead of saying it is
        gone, while no message is delivered any more)."""
        from nats.js.errors import NotFoundError

        if self.subscription is None or self.restarting:
            return
        try:
            await asyncio.wait_for(self.subscription.consumer_info(), self._check_timeout_s())
            self.unanswered_checks = 0
            return
        except NotFoundError:
            why = "is gone"
        except Exception as error:  # timeout, no responders, JetStream unavailable
            self.unanswered_checks += 1
            if self.unanswered_checks < CONSUMER_CHECKS:
                return
            why = f"does not answer ({type(error).__name__})"
        if self.restarting:  # a missing delivery restarted it meanwhile
            return
        self.unanswered_checks = 0
        log.warning("partition %d: the consumer %s; consuming again after sequence %d",
                    self.index, why, self.applied_seq)  # fmt: skip
        self._restart_consumer()

    def _check_timeout_s(self) -> float:
        return max(1.0, self.context.config.lease_s)

    async def _subscribe(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied_seq + 1,
            ack_policy=AckPolicy.ALL,
            max_deliver=1,
            ack_wait=3600.0,
            max_ack_pending=self.context.config.max_in_flight,
            inactive_threshold=max(10.0, 3 * self.context.config.lease_s),
            mem_storage=True,
            num_replicas=1,
        )
        self.expected_delivery = 1
        self.generation += 1
        generation = self.generation

        async def on_message(message: Any) -> None:
            await self._on_message(message, generation)

        self.subscription = await self.context.js.subscribe(
            partition_subjects(self.index),
            stream=SAMPLES_STREAM,
            cb=on_message,
            config=config,
            manual_ack=True,
            pending_msgs_limit=4 * self.context.config.max_in_flight,
            pending_bytes_limit=-1,
        )

    async def _on_message(self, message: Any, generation: int) -> None:
        """Called by nats-py for each delivery of one subscription, one at a time, in log order."""
        if self._superseded(generation) or not (message.reply or "").startswith("$JS.ACK."):
            return  # a status message (heartbeat, flow control), or one of a dropped consumer
        meta = message.metadata
        if meta.sequence.consumer != self.expected_delivery:
            self.context.metrics.redeliveries += 1
            self._restart_consumer()
            return
        self.expected_delivery += 1
        self.lag = meta.num_pending
        await self.context.in_flight.acquire()  # back-pressure: the worker's bound, all partitions
        if not self.open.is_set():
            await self.open.wait()
        if self._superseded(generation):  # consumed again meanwhile: the new consumer has it
            self.context.in_flight.release()
            return
        item = _Dispatched(meta.sequence.stream, log_time_us(meta.timestamp), message)
        self.dispatched.append(item)
        self.idle.clear()
        task = asyncio.get_running_loop().create_task(self._handle(item))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _superseded(self, generation: int) -> bool:
        return self.restarting or generation != self.generation

    def _restart_consumer(self) -> None:
        """A delivery went missing or the consumer is lost: drop what follows and consume
        again after the last applied message."""
        self.restarting = True

        async def restart() -> None:
            await self.idle.wait()
            await self._unsubscribe()
            while not self.stopped:  # the log may have no leader for a while: until consuming
                self.restarting = False  # with no await before _subscribe's new generation
                try:
                    await self._subscribe()
                    return
                except Exception as error:
                    log.warning("partition %d: cannot consume yet (%s: %s); retrying",
                                self.index, type(error).__name__, error)  # fmt: skip
                    await asyncio.sleep(min(1.0, self.context.config.lease_s / 3))

        asyncio.get_running_loop().create_task(restart())

    async def _handle(self, item: _Dispatched) -> None:
        started = time.perf_counter()
        _, stream_id = stream_of_stored(item.message.subject)
        try:
            answer = await answer_message(self.registry, self.rate_limit, stream_id, item.sequence,
                                          item.log_us, item.message)  # fmt: skip
            await self.context.answers.publish(stream_id, item.sequence, item.message, answer)
        finally:
            self.context.in_flight.release()
        self.context.metrics.observe(answer, time.perf_counter() - started)
        item.done = True
        self._advance()

    def _advance(self) -> None:
        """Move the applied sequence over the finished prefix and acknowledge it."""
        last = None
        while self.dispatched and self.dispatched[0].done:
            last = self.dispatched.popleft()
        if last is None:
            return
        self.applied_seq, self.applied_log_us = last.sequence, last.log_us
        if not self.dispatched:
            self.idle.set()
        task = asyncio.get_running_loop().create_task(last.message.ack())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def capture(self) -> Checkpoint:
        """The partition taken between two messages: intake pauses meanwhile."""
        self.open.clear()
        try:
            await self.idle.wait()
            return Checkpoint(self.applied_seq, self.registry.export(),
                              self.rate_limit.export(self.applied_log_us))  # fmt: skip
        finally:
            self.open.set()

    async def checkpoint(self) -> None:
        checkpoint = await self.capture()
        started = time.perf_counter()
        size = await self.context.checkpoints.save(self.index, checkpoint)
        self.last_checkpoint_monotonic = time.monotonic()
        self.context.metrics.observe_checkpoint(time.perf_counter() - started, size)

    async def _unsubscribe(self) -> None:
        if self.subscription is not None:
            try:
                await asyncio.wait_for(self.subscription.unsubscribe(), self._check_timeout_s())
            except Exception as error:  # the consumer may be gone already; it expires anyway
                log.debug("partition %d: unsubscribe failed: %s", self.index, error)
            self.subscription = None

    async def stop(self) -> None:
        """Stop taking messages and let the dispatched ones finish."""
        self.stopped = True
        self.open.clear()
        await self._unsubscribe()
        await self.idle.wait()
