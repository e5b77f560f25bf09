"""Per-stream rate limits, decided by the log's own clock so that replay decides the same.

A cell that sends too fast (a firmware bug, a replay loop) must not take the capacity of the
other streams of its partition. The worker is where the limit belongs: every path into the
fleet (cells publishing to NATS, ``bsoc replay --nats``, any number of gateways) ends in
the one owner of the stream, in log order, while a gateway sees only its own clients.

The limit is a GCRA (the generic cell rate algorithm, a token bucket kept as one number
per stream): a stream may send ``rate_hz`` samples per second on average and ``burst``
samples at once. Time is the timestamp the log stored each message with, not the worker's
clock, so the decision is a function of the log: a worker that takes over and replays the
messages after a checkpoint refuses exactly the ones the first owner refused, however fast
it replays. The per-stream state is taken with the partition's checkpoint. A message over
the limit is refused whole (as every refusal is) with kind ``rate_limited``, status 429,
and goes to the dead-letter subject with its reason. Valid messages count whether or not the
stream rules then refuse them (a flood of stale copies is work too); messages that do not
parse are refused before and cost nothing.

A consequence of the log's clock: a cell that buffered samples while offline and sends them
at once is measured by when they reach the log, so ``burst`` is also how many samples a
cell may catch up with in one go.
"""

from __future__ import annotations

import datetime as dt

from bsoc.serve.errors import StreamRateLimited

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def log_time_us(stored: dt.datetime) -> int:
    """A message's log timestamp (``metadata.timestamp``) in whole microseconds, exactly."""
    return (stored - _EPOCH) // _MICROSECOND


class StreamRateLimit:
    """The rate limit of one partition's streams (``rate_hz`` 0: no limit)."""

    def __init__(self, rate_hz: float, burst: int) -> None:
        self.rate_hz, self.burst = rate_hz, burst
        self.interval_us = round(1e6 / rate_hz) if rate_hz > 0 else 0
        self.due_us: dict[str, int] = {}  # per stream: when its allowance is next whole

    def admit(self, stream_id: str, samples: int, now_us: int) -> None:
        """Count ``samples`` of ``stream_id`` at log time ``now_us``, or refuse them all.

        Call in log order: each call depends on the ones before it for the same stream.
        """
        if not self.interval_us:
            return
        due = max(self.due_us.get(stream_id, now_us), now_us) + samples * self.interval_us
        if due - now_us > self.burst * self.interval_us:
            wait_s = (due - now_us - self.burst * self.interval_us) / 1e6
            raise StreamRateLimited(
                f"stream {stream_id!r} sends faster than its limit of {self.rate_hz:g} samples/s "
                f"(bursts of {self.burst}): these {samples} samples would fit {wait_s:.3f} s "
                "later; they were not applied: send more slowly (or ask for a higher "
                "--max-stream-rate)"
            )
        self.due_us[stream_id] = due

    def export(self, now_us: int) -> dict[str, int]:
        """The state to checkpoint at log time ``now_us``; a stream whose allowance is whole
        again is dropped first (it behaves as one never seen), so the state stays small."""
        self.due_us = {sid: due for sid, due in self.due_us.items() if due > now_us}
        return dict(self.due_us)

    def restore(self, due_us: dict[str, int]) -> None:
        self.due_us = {str(sid): int(due) for sid, due in due_us.items()}
