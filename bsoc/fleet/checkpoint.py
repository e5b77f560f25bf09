"""Partition checkpoints in the JetStream object store.

A checkpoint is the ``bsoc serve`` snapshot format (:mod:`bsoc.serve.snapshot`) of one
partition's streams, with the log sequence it has applied in its header: every sample of the
partition up to that sequence is in the states, none after it. An object store write only
becomes visible when its last chunk and then its metadata are stored, so a reader sees the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np

from bsoc.serve.snapshot import decode_snapshot, encode_snapshot

DAMAGED_REMEDY = (
    "the fleet cannot continue this partition exactly; restore the object store from a backup, "
    "or start a new fleet (a new NATS store)"
)


def object_name(partition: int) -> str:
    return f"partition-{partition}"


class CheckpointStore:
    """Load and save partition checkpoints made for one model."""

    def __init__(self, store: Any, model: dict[str, Any]) -> None:
        self.store, self.model = store, model

    async def load(self, partition: int) -> tuple[int, dict[str, np.ndarray] | None]:
        """(applied sequence, arrays) of the partition's checkpoint; (0, None) if it has none."""
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        buffer = io.BytesIO()
        try:
            await self.store.get(object_name(partition), writeinto=buffer)
        except (NotFoundError, ObjectNotFoundError):
            return 0, None
        source = f"checkpoint of partition {partition}"
        header, arrays = await asyncio.to_thread(
            decode_snapshot, buffer.getvalue(), self.model, source, DAMAGED_REMEDY
        )
        return int(header["fleet"]["applied_seq"]), arrays

    async def save(self, partition: int, applied_seq: int, arrays: dict[str, np.ndarray]) -> int:
        """Store the checkpoint; returns its size in bytes."""
        extra = {"fleet": {"partition": partition, "applied_seq": applied_seq}}
        data = await asyncio.to_thread(encode_snapshot, arrays, self.model, extra)
        await self.store.put(object_name(partition), data)
        return len(data)
