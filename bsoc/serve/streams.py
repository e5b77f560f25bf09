"""Per-stream state and the rules for changing it.

A stream is created by its first accepted sample and holds the model's state vector, the
time of its last sample and a short history for the dashboard.

Ordering and concurrency (the documented contract): every write to one stream runs under
that stream's FIFO lock, so requests to one stream are applied one at a time in the order
they reached the lock (after their body was parsed and validated). Each is checked against
the stream's latest time *at that moment*: its first sample must be later than the last
accepted one, its samples strictly increasing. So when two clients send the same or
overlapping timestamps, the first to arrive wins and the other gets 409 ``out_of_order``;
interleaved, increasing samples from two clients are both accepted, in arrival order.
Refusals are the domain errors of :mod:`bsoc.serve.errors`.

A request is all-or-nothing: the state is replaced only after the model has stepped every
one of its samples. Anything rejected or failed leaves the stream exactly as it was (a
stream that did not exist is not created).

Gaps: when a sample comes more than ``gap_limit_s`` after the previous one, policy
``reset`` restarts the stream from the model's initial state at that sample (the model
re-acquires SOC as in a cold start, because its memory of the cell is stale) and policy
``flag`` keeps the state; either way the estimate is marked ``gap: true`` and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

from bsoc.serve.batching import MicroBatcher
from bsoc.serve.errors import SamplesNotIncreasing, SamplesNotNewer, TooManyStreams, UnknownStream

GAP_POLICIES = ("reset", "flag")
HISTORY_FIELDS = ("time_s", "soc", "voltage_v", "current_a", "temperature_c", "soc_std")


@dataclass
class Stream:
    state: np.ndarray  # (S,)
    last_time: float
    samples: int
    gaps: int
    soc: float
    soc_std: float | None  # the estimate's standard deviation, for a model with one
    last_sample: np.ndarray  # (4,)
    updated_unix_s: float
    history: np.ndarray  # (H, 5) ring of HISTORY_FIELDS, for the dashboard
    history_count: int = 0

    def remember(self, rows: np.ndarray, soc: np.ndarray, soc_std: np.ndarray | None) -> None:
        size = len(self.history)
        if size == 0:
            return
        spread = np.full(len(soc), np.nan) if soc_std is None else soc_std
        for row, value, std in zip(rows[-size:], soc[-size:], spread[-size:]):
            self.history[self.history_count % size] = (row[0], value, row[1], row[2], row[3],
                                                       std)
            self.history_count += 1

    def recent(self, n: int) -> np.ndarray:
        """Last ``n`` history rows, oldest first."""
        size = len(self.history)
        n = min(n, self.history_count, size)
        idx = (np.arange(self.history_count - n, self.history_count)) % max(size, 1)
        return self.history[idx]


@dataclass
class Applied:
    soc: np.ndarray  # (K,)
    soc_std: np.ndarray | None  # (K,) for a model with an uncertainty
    gap: np.ndarray  # (K,) bool


class StreamRegistry:
    """All streams of one model, and the only code that changes them."""

    def __init__(
        self,
        batcher: MicroBatcher,
        initial_state: np.ndarray,
        *,
        gap_limit_s: float = 300.0,
        gap_policy: str = "reset",
        max_streams: int = 20_000,
        history_len: int = 300,
    ) -> None:
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"gap policy must be one of {GAP_POLICIES}, not {gap_policy!r}")
        self.batcher = batcher
        self.initial_state = np.asarray(initial_state, dtype=np.float64)
        self.gap_limit_s = gap_limit_s
        self.gap_policy = gap_policy
        self.max_streams = max_streams
        self.history_len = history_len
        self.streams: dict[str, Stream] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.streams)

    def __iter__(self) -> Iterator[tuple[str, Stream]]:
        return iter(sorted(self.streams.items()))

    @asynccontextmanager
    async def _exclusive(self, stream_id: str):
        """The stream's FIFO lock, dropped when nobody uses or waits for it."""
        lock = self._locks.setdefault(stream_id, asyncio.Lock())
        self._lock_users[stream_id] = self._lock_users.get(stream_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[stream_id] -= 1
            if self._lock_users[stream_id] == 0:
                del self._lock_users[stream_id], self._locks[stream_id]

    async def apply(self, stream_id: str, rows: np.ndarray) -> Applied:
        """Step one stream through ``rows`` (K, 4) and commit, or refuse and change nothing."""
        async with self._exclusive(stream_id):
            stream = self.streams.get(stream_id)
            if stream is None:
                self._check_capacity()
            times = rows[:, 0].tolist()
            steps = np.diff(rows[:, 0])
            if (steps <= 0).any():
                k = int(np.flatnonzero(steps <= 0)[0]) + 1
                raise SamplesNotIncreasing(
                    f"samples[{k}].time_s = {times[k]!r} does not come after samples[{k - 1}]"
                    f".time_s = {times[k - 1]!r}; send samples in strictly increasing time",
                )
            if stream is not None and times[0] <= stream.last_time:
                raise SamplesNotNewer(
                    f"samples[0].time_s = {times[0]!r} is not after the stream's last accepted "
                    f"time {stream.last_time!r}; send only newer samples (or DELETE the stream "
                    "to start it again)",
                )
            previous = np.concatenate(
                [[np.nan if stream is None else stream.last_time], times[:-1]]
            )
            gap = (rows[:, 0] - previous) > self.gap_limit_s  # NaN compares False: a new stream
            state = self.initial_state if stream is None else stream.state
            resets = gap if self.gap_policy == "reset" else np.zeros_like(gap)
            soc, soc_std, new_state = await self.batcher.submit(rows, state, resets)
            self._commit(stream_id, stream, rows, soc, soc_std, new_state, int(gap.sum()))
            return Applied(soc=soc, soc_std=soc_std, gap=gap)

    def _commit(
        self,
        stream_id: str,
        stream: Stream | None,
        rows: np.ndarray,
        soc: np.ndarray,
        soc_std: np.ndarray | None,
        state: np.ndarray,
        gaps: int,
    ) -> None:
        if stream is None:
            self._check_capacity()  # again: other new streams may have committed meanwhile
            stream = Stream(
                state=state,
                last_time=0.0,
                samples=0,
                gaps=0,
                soc=0.0,
                soc_std=None,
                last_sample=rows[-1],
                updated_unix_s=0.0,
                history=self._new_history(),
            )
            self.streams[stream_id] = stream
        stream.state = state
        stream.last_time = float(rows[-1, 0])
        stream.samples += len(rows)
        stream.gaps += gaps
        stream.soc = float(soc[-1])
        stream.soc_std = None if soc_std is None else float(soc_std[-1])
        stream.last_sample = rows[-1].copy()
        stream.updated_unix_s = time.time()
        stream.remember(rows, soc, soc_std)

    def _new_history(self) -> np.ndarray:
        return np.zeros((self.history_len, len(HISTORY_FIELDS)))

    def _check_capacity(self) -> None:
        if len(self.streams) >= self.max_streams:
            raise TooManyStreams(
                f"the service already holds its limit of {self.max_streams} streams; "
                "DELETE finished streams or start it with a larger --max-streams",
            )

    async def delete(self, stream_id: str) -> Stream:
        """Forget a stream (after any write already queued for it has been applied)."""
        async with self._exclusive(stream_id):
            stream = self.streams.pop(stream_id, None)
        if stream is None:
            raise _unknown(stream_id)
        return stream

    def get(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise _unknown(stream_id)
        return stream

    def export(self) -> dict[str, np.ndarray]:
        """Consistent copy of every stream's committed state (call on the event loop)."""
        ids = sorted(self.streams)
        size = len(self.initial_state)
        return {
            "stream_ids": np.array(ids, dtype=str),
            "states": np.array([self.streams[i].state for i in ids]).reshape(len(ids), size),
            "last_time_s": np.array([self.streams[i].last_time for i in ids], dtype=np.float64),
            "samples": np.array([self.streams[i].samples for i in ids], dtype=np.int64),
            "gaps": np.array([self.streams[i].gaps for i in ids], dtype=np.int64),
            "soc": np.array([self.streams[i].soc for i in ids], dtype=np.float64),
            "last_sample": np.array([self.streams[i].last_sample for i in ids]).reshape(-1, 4),
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> int:
        """Replace all streams by a snapshot's (history starts empty; the SOC's standard
        deviation is read off the states). Returns the count."""
        self.streams.clear()
        estimator = self.batcher.estimator
        spread = (estimator.soc_std(arrays["states"]) if len(arrays["states"])
                  and estimator.has_uncertainty else None)
        for k, stream_id in enumerate(arrays["stream_ids"].tolist()):
            self.streams[stream_id] = Stream(
                state=arrays["states"][k].astype(np.float64),
                last_time=float(arrays["last_time_s"][k]),
                samples=int(arrays["samples"][k]),
                gaps=int(arrays["gaps"][k]),
                soc=float(arrays["soc"][k]),
                soc_std=None if spread is None else float(spread[k]),
                last_sample=arrays["last_sample"][k].astype(np.float64),
                updated_unix_s=time.time(),
                history=self._new_history(),
            )
        return len(self.streams)


def _unknown(stream_id: str) -> UnknownStream:
    return UnknownStream(f"no stream {stream_id!r}; it has sent no samples")
