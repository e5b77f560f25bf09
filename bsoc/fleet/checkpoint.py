"""Partition checkpoints in the JetStream object store.

A checkpoint is the ``bsoc serve`` snapshot format (:mod:`bsoc.serve.snapshot`) of one
partition's streams, with the log sequence it has applied in its header: every sample of the
partition up to that sequence is in the states, none after it; the header also holds the
partition's rate-limit state at that sequence (:mod:`.ratelimit`). An object store write only
becomes visible when its last chunk and then its metadata are stored, so a reader sees the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bsoc.serve.snapshot import decode_snapshot, encode_snapshot

DAMAGED_REMEDY = (
    "the fleet cannot continue this partition exactly; restore the object store from a backup, "
    "or start a new fleet (a new NATS store)"
)


@dataclass
class Checkpoint:
    """One partition after exactly the messages up to ``applied_seq``."""

    applied_seq: int = 0
    arrays: dict[str, np.ndarray] | None = None  # the registry's export; None: no streams yet
    rate_due_us: dict[str, int] = field(default_factory=dict)  # the rate limit's state


def object_name(partition: int) -> str:
    return f"partition-{partition}"


class CheckpointStore:
    """Load and save partition checkpoints made for one model."""

    def __init__(self, store: Any, model: dict[str, Any]) -> None:
        self.store, self.model = store, model

    async def load(self, partition: int) -> Checkpoint:
        """The partition's checkpoint; an empty one (sequence 0) if it has none."""
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        buffer = io.BytesIO()
        try:
            await self.store.get(object_name(partition), writeinto=buffer)
        except (NotFoundError, ObjectNotFoundError):
            return Checkpoint()
        source = f"checkpoint of partition {partition}"
        header, arrays = await asyncio.to_thread(
            decode_snapshot, buffer.getvalue(), self.model, source, DAMAGED_REMEDY
        )
        fleet = header["fleet"]
        return Checkpoint(int(fleet["applied_seq"]), arrays, fleet.get("rate_due_us", {}))

    async def save(self, partition: int, checkpoint: Checkpoint) -> int:
        """Store the checkpoint; returns its size in bytes."""
        extra = {"fleet": {"partition": partition, "applied_seq": checkpoint.applied_seq,
                           "rate_due_us": checkpoint.rate_due_us}}  # fmt: skip
        data = await asyncio.to_thread(encode_snapshot, checkpoint.arrays, self.model, extra)
        await self.store.put(object_name(partition), data)
        return len(data)
