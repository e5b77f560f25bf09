"""Who owns which partition: leases in a JetStream key-value bucket.

Each partition ``p`` has a key ``lease.p`` naming its owner; each worker has a heartbeat key
``worker.<id>``. A worker renews its leases with compare-and-set updates (``update(last=
revision)``) every third of the lease time, so two workers can never both succeed in taking
or renewing the same lease revision. Each round the worker reads every lease and heartbeat
key. A lease (or a heartbeat) is *stale* when this worker has seen its revision stay unchanged for longer than the lease time by its own monotonic
clock, so no two machines' clocks need to agree. A worker takes a free or stale lease while
it owns fewer than its fair share (``ceil(partitions / live workers)``) and hands back,
after a final checkpoint, the leases it holds beyond that share, so a worker that joins
gets work and a dead one's partitions are taken over within about one lease time.

Exactness never depends on the lease: a partition's state is a pure function of its log
(see :mod:`bsoc.fleet.partition`), so even two owners for a moment (a stalled worker that has
not yet noticed its lease is gone) produce the same estimates and consistent checkpoints.
The lease only keeps that from being the normal case.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field

LEASE_PREFIX = "lease."
WORKER_PREFIX = "worker."
SETTINGS_KEY = "fleet"


@dataclass
class Observed:
    """One key as last seen: its revision, its value (None once deleted) and since when."""

    revision: int
    value: dict | None
    changed_at: float  # time.monotonic() when this revision was first seen


@dataclass
class LeaseView:
    """What this worker has seen of the bucket, and the choices that follow from it."""

    partitions: int
    lease_s: float
    me: str
    keys: dict[str, Observed] = field(default_factory=dict)

    def observe(self, key: str, revision: int, value: bytes | None, now: float) -> None:
        """Record an update (``value`` None for a delete or purge); older revisions than the
        one already seen (a lagging watcher after a direct read) change nothing."""
        seen = self.keys.get(key)
        if seen is not None and revision <= seen.revision:
            return
        decoded = None
        if value:
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = None
        self.keys[key] = Observed(revision, decoded, now)

    def stale(self, seen: Observed, now: float) -> bool:
        return now - seen.changed_at > self.lease_s

    def owner(self, partition: int, now: float) -> str | None:
        """The live owner of a partition, if any."""
        seen = self.keys.get(f"{LEASE_PREFIX}{partition}")
        if seen is None or seen.value is None or self.stale(seen, now):
            return None
        return seen.value.get("owner")

    def live_workers(self, now: float) -> set[str]:
        live = {
            key[len(WORKER_PREFIX):]
            for key, seen in self.keys.items()
            if key.startswith(WORKER_PREFIX) and seen.value is not None and not self.stale(seen, now)
        }  # fmt: skip
        return live | {self.me}

    def fair_share(self, now: float) -> int:
        return math.ceil(self.partitions / len(self.live_workers(now)))

    def free(self, now: float) -> list[int]:
        """Partitions with no live owner, in this worker's own order of preference.

        Rendezvous order (a hash of worker and partition) spreads workers over different
        partitions, so two starting together rarely race for the same lease.
        """
        free = [p for p in range(self.partitions) if self.owner(p, now) is None]
        return sorted(free, key=lambda p: zlib.crc32(f"{self.me}/{p}".encode()))

    def plan(self, owned: set[int], now: float) -> tuple[list[int], list[int]]:
        """(partitions to try to take, partitions to hand back) for this worker now."""
        share = self.fair_share(now)
        if len(owned) > share:
            return [], sorted(owned)[share:]
        return [p for p in self.free(now) if p not in owned][: share - len(owned)], []

    def revision(self, partition: int) -> int:
        """Revision to compare-and-set against when taking a lease (0: create it)."""
        seen = self.keys.get(f"{LEASE_PREFIX}{partition}")
        return 0 if seen is None else seen.revision


def lease_key(partition: int) -> str:
    return f"{LEASE_PREFIX}{partition}"


def worker_key(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def lease_value(worker_id: str) -> bytes:
    return json.dumps({"owner": worker_id, "renewed_unix_s": time.time()}).encode()
