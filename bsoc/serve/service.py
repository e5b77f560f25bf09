"""The live service itself, apart from any transport: streams, batching, snapshots, lifecycle.

:class:`Service` holds what the routes and the WebSocket protocol share (the registry, the
micro-batcher, metrics, the snapshot schedule); it starts and stops with the app
(:func:`bsoc.serve.app.create_app`). Its refusals are domain errors (:mod:`bsoc.serve.errors`).
The routes need only what :class:`StreamService` names, so the fleet's gateway, which holds
its streams in a log, serves the same API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bsoc import __version__
from bsoc.estimator import CONFIG_FILE, WEIGHTS_FILE, SocEstimator
from bsoc.heap import settle_heap
from bsoc.serve.batching import MicroBatcher
from bsoc.serve.errors import ModelFailed
from bsoc.serve.metrics import Metrics
from bsoc.serve.schemas import (
    Estimate,
    Health,
    History,
    ModelInfo,
    Sample,
    StreamList,
    StreamStatus,
    StreamSummary,
)
from bsoc.serve.snapshot import (
    DamagedSnapshotError,
    check_writable,
    read_snapshot,
    remove_leftover_temporaries,
    set_aside,
    write_snapshot,
)
from bsoc.serve.streams import HISTORY_FIELDS, Applied, Stream, StreamRegistry

log = logging.getLogger("bsoc.serve")


@dataclass
class ServeConfig:
    """Service settings (each is a ``bsoc serve`` option)."""

    api_key: str | None = None
    snapshot_path: Path | None = None
    snapshot_interval_s: float = 30.0
    discard_bad_snapshot: bool = False
    gap_limit_s: float = 300.0
    gap_policy: str = "reset"
    max_body_bytes: int = 1 << 20
    max_streams: int = 20_000
    batch_wait_s: float = 0.003
    max_batch: int = 4096
    history_len: int = 300


def describe_model(estimator: SocEstimator, directory: str | Path | None) -> dict[str, Any]:
    """Name, kind, state size and a content fingerprint of the model folder's files."""
    digest = hashlib.sha256()
    if directory is not None:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = Path(directory) / name
            if path.is_file():
                digest.update(path.read_bytes())
    digest.update(json.dumps([estimator.kind, len(estimator.initial_state())]).encode())
    return {
        "name": str(getattr(estimator, "name", "model")),
        "kind": estimator.kind,
        "state_size": int(len(estimator.initial_state())),
        "fingerprint": digest.hexdigest()[:16],
    }


class StreamService(Protocol):
    """What the routes need from whatever holds the streams (this process, or a fleet)."""

    config: Any  # .api_key and .max_body_bytes
    metrics: Metrics

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def apply(
        self, stream_id: str, samples: list[Sample], transport: str
    ) -> list[Estimate]: ...

    async def list_streams(self, prefix: str, limit: int) -> StreamList: ...

    async def stream_status(self, stream_id: str, history: int) -> StreamStatus: ...

    async def delete_stream(self, stream_id: str) -> StreamStatus: ...

    async def health(self) -> Health: ...

    async def metrics_text(self) -> str: ...


class Service:
    """The streams of one model in this process: the registry, the batcher, metrics,
    snapshots (a :class:`StreamService`)."""

    def __init__(self, estimator: SocEstimator, config: ServeConfig, model: dict[str, Any]):
        self.config, self.model = config, model
        self.metrics = Metrics(snapshots=config.snapshot_path is not None)
        self.batcher = MicroBatcher(
            estimator,
            max_wait_s=config.batch_wait_s,
            max_jobs=config.max_batch,
            on_batch=self.metrics.observe_batch,
        )
        self.registry = StreamRegistry(
            self.batcher,
            estimator.initial_state(),
            gap_limit_s=config.gap_limit_s,
            gap_policy=config.gap_policy,
            max_streams=config.max_streams,
            history_len=config.history_len,
        )
        # One step now, so that loading (or, after an upgrade, compiling) the model's kernel
        # happens before the service reports healthy, not in its first requests.
        estimator.step_batch(np.array([[0.0, 3.7, 0.0, 25.0]]), estimator.initial_state()[None])
        self.restored, self.set_aside_to = 0, None
        if config.snapshot_path is not None:
            self.restored = self._restore(config.snapshot_path)
        self._stopping = asyncio.Event()
        self._snapshotter: asyncio.Task | None = None

    def _restore(self, path: Path) -> int:
        """Refuse an unwritable path now (not at the first periodic write), then load the states.

        Also removes the temporary file of a write that a killed predecessor never finished.
        """
        check_writable(path)
        remove_leftover_temporaries(path)
        try:
            arrays = read_snapshot(path, self.model)
        except DamagedSnapshotError as damaged:
            if not self.config.discard_bad_snapshot:
                raise
            self.set_aside_to = set_aside(path)
            log.warning("%s; renamed it to %s and starting with no streams", damaged.message,
                        self.set_aside_to)  # fmt: skip
            return 0
        return 0 if arrays is None else self.registry.restore(arrays)

    async def start(self) -> None:
        settle_heap()
        self.batcher.start()
        if self.config.snapshot_path is not None and self.config.snapshot_interval_s > 0:
            self._snapshotter = asyncio.get_running_loop().create_task(self._snapshot_loop())

    async def stop(self) -> None:
        """Finish a snapshot in progress, stop the batcher, and always try the shutdown snapshot."""
        self._stopping.set()
        try:
            if self._snapshotter is not None:
                await self._snapshotter
            await self.batcher.stop()
        finally:
            if self.config.snapshot_path is not None:
                await self.snapshot()

    async def snapshot(self) -> None:
        """Write every stream's state.

        Never raises: a failed write is counted and logged, and /healthz reports degraded
        until a later write (the next period, or the shutdown) succeeds.
        """
        arrays = self.registry.export()  # on the loop: a consistent set of committed states
        path = self.config.snapshot_path
        try:
            await asyncio.to_thread(write_snapshot, path, arrays, self.model)
        except Exception as error:  # mostly OSError; whatever it is, the next period retries
            reason = f"the last snapshot write to {path} failed ({type(error).__name__}: {error})"
            self.metrics.observe_snapshot_error(reason)
            log.warning("%s; %d streams not saved", reason, len(arrays["stream_ids"]))
            return
        self.metrics.observe_snapshot()

    async def _snapshot_loop(self) -> None:
        """One write per interval until stop() (which never interrupts a write in progress)."""
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.config.snapshot_interval_s)
                return
            except TimeoutError:
                await self.snapshot()

    async def apply(self, stream_id: str, samples: list[Sample], transport: str) -> list[Estimate]:
        started = time.perf_counter()
        rows = np.array([s.row() for s in samples], dtype=np.float64)
        try:
            applied = await self.registry.apply(stream_id, rows)
        except RuntimeError as error:  # the model failed; nothing was committed
            raise ModelFailed(f"the model failed: {error}") from error
        gaps = int(applied.gap.sum())
        self.metrics.observe_request(transport, time.perf_counter() - started, len(rows), gaps)
        return estimates_of(rows, applied)

    async def list_streams(self, prefix: str, limit: int) -> StreamList:
        chosen = [(i, s) for i, s in self.registry if i.startswith(prefix)]
        return stream_list(chosen, limit)

    async def stream_status(self, stream_id: str, history: int) -> StreamStatus:
        return stream_status(stream_id, self.registry.get(stream_id), history)

    async def delete_stream(self, stream_id: str) -> StreamStatus:
        return stream_status(stream_id, await self.registry.delete(stream_id), 0)

    async def health(self) -> Health:
        failure = self.metrics.snapshot_failure
        return Health(
            status="degraded" if failure else "ok",
            reason=failure,
            version=__version__,
            model=ModelInfo(**self.model),
            streams=len(self.registry),
            uptime_s=time.time() - self.metrics.started,
            gap_limit_s=self.config.gap_limit_s,
            gap_policy=self.config.gap_policy,
        )

    async def metrics_text(self) -> str:
        model = {k: str(v) for k, v in self.model.items()}
        return self.metrics.render(len(self.registry), model)


def estimates_of(rows: np.ndarray, applied: Applied) -> list[Estimate]:
    """One estimate per applied sample, with its standard deviation where the model has one
    (the same numbers whether ``bsoc serve`` or a fleet worker stepped them)."""
    spread = [None] * len(rows) if applied.soc_std is None else applied.soc_std.tolist()
    return [
        Estimate(time_s=float(t), soc=float(s), soc_std=d, gap=bool(g))
        for t, s, d, g in zip(rows[:, 0].tolist(), applied.soc.tolist(), spread,
                              applied.gap.tolist())
    ]


def stream_list(chosen: list[tuple[str, Stream]], limit: int) -> StreamList:
    """The listing of ``chosen`` (id order), at most ``limit`` of them, with the full count."""
    return StreamList(
        count=len(chosen),
        streams=[
            StreamSummary(stream_id=i, samples=s.samples, last_time_s=s.last_time, soc=s.soc,
                          soc_std=s.soc_std)
            for i, s in chosen[:limit]
        ],
    )


def stream_status(stream_id: str, stream: Stream, history: int) -> StreamStatus:
    """What GET and DELETE answer about one stream."""
    recent = None
    if history:
        rows = stream.recent(history)
        recent = History(**{name: rows[:, k].tolist() for k, name in enumerate(HISTORY_FIELDS)
                            if name != "soc_std"},
                         soc_std=None if stream.soc_std is None
                         else rows[:, HISTORY_FIELDS.index("soc_std")].tolist())
    t, v, i, c = stream.last_sample.tolist()
    return StreamStatus(
        stream_id=stream_id,
        samples=stream.samples,
        gaps=stream.gaps,
        last_time_s=stream.last_time,
        soc=stream.soc,
        soc_std=stream.soc_std,
        last_sample=Sample(time_s=t, voltage_v=v, current_a=i, temperature_c=c),
        updated_unix_s=stream.updated_unix_s,
        history=recent,
    )
