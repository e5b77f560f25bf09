"""Micro-batching: step every stream that has pending samples in one model call.

Requests from many streams arrive concurrently. Each becomes a *job*: one stream's state
vector and its K new samples. The batcher waits at most ``max_wait_s`` after the oldest
pending job (or until ``max_jobs`` are pending), then advances all jobs together: model
step t gathers the t-th sample of every job that has one into a (B, 4) array and calls
``step_batch`` once. So throughput grows with the number of streams while a lone stream
waits at most ``max_wait_s`` extra.

The model runs in one worker thread so the event loop keeps parsing the next requests
while it computes. Results are pure outputs: the caller commits them (or not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bsoc.estimator import SocEstimator


@dataclass
class Job:
    """One stream's pending work. ``reset_before[k]``: restart from the initial state first."""

    samples: np.ndarray  # (K, 4)
    state: np.ndarray  # (S,)
    reset_before: np.ndarray  # (K,) bool
    future: asyncio.Future = field(repr=False, default=None)  # type: ignore[assignment]
    queued_at: float = 0.0


def step_jobs(
    estimator: SocEstimator,
    samples: list[np.ndarray],
    states: np.ndarray,
    reset_before: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
    """Advance J streams through their own sample sequences, batched across streams.

    ``samples[j]`` (K_j, 4), ``states`` (J, S), ``reset_before[j]`` (K_j,). Returns SOC per
    job (K_j,), its standard deviation per job (K_j,) for a model with an uncertainty (else
    None) and the final states (J, S). Equal, stream by stream, to stepping each sequence
    alone, because step_batch treats its rows independently.
    """
    lengths = np.array([len(s) for s in samples])
    n_steps = int(lengths.max(initial=0))
    rows = np.zeros((len(samples), n_steps, 4))  # (J, K_max, 4), zero-padded
    resets = np.zeros((len(samples), n_steps), dtype=bool)
    for j, (seq, reset) in enumerate(zip(samples, reset_before)):
        rows[j, : len(seq)] = seq
        resets[j, : len(seq)] = reset
    states = np.array(states, dtype=np.float64, copy=True)
    out = np.empty((len(samples), n_steps))
    spread = np.empty((len(samples), n_steps)) if estimator.has_uncertainty else None
    initial = estimator.initial_state()
    for t in range(n_steps):
        active = np.flatnonzero(lengths > t)
        current = states[active]
        current[resets[active, t]] = initial
        soc, new = estimator.step_batch(rows[active, t], current)
        soc = np.asarray(soc, dtype=np.float64).reshape(-1)
        new = np.asarray(new, dtype=np.float64)
        if soc.shape != (len(active),) or new.shape != current.shape:
            raise RuntimeError(
                f"{type(estimator).__name__}.step_batch returned shapes {soc.shape}, {new.shape} "
                f"for a batch of {len(active)} streams with state size {current.shape[1]}"
            )
        if not (np.isfinite(soc).all() and np.isfinite(new).all()):
            raise RuntimeError(f"{type(estimator).__name__}.step_batch returned non-finite values")
        states[active] = new
        out[active, t] = soc
        if spread is not None:
            spread[active, t] = estimator.soc_std(new)
    socs = [out[j, :n] for j, n in enumerate(lengths)]
    stds = None if spread is None else [spread[j, :n] for j, n in enumerate(lengths)]
    return socs, stds, states


class MicroBatcher:
    """Collects jobs from concurrent requests and runs them as batched model steps."""

    def __init__(
        self,
        estimator: SocEstimator,
        *,
        max_wait_s: float = 0.003,
        max_jobs: int = 4096,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.estimator = estimator
        self.max_wait_s = max_wait_s
        self.max_jobs = max_jobs
        self.on_batch = on_batch  # (jobs, model steps), called on the event loop
        self._pending: list[Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bsoc-model")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bsoc-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    async def submit(
        self, samples: np.ndarray, state: np.ndarray, reset_before: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """SOC (K,), its std (K,) or None, and the final state (S,) for one stream; the
        caller decides to commit."""
        job = Job(samples, state, reset_before, asyncio.get_running_loop().create_future())
        job.queued_at = time.perf_counter()
        self._pending.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = self._pending[0].queued_at + self.max_wait_s
            while len(self._pending) < self.max_jobs:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                await asyncio.sleep(remaining)
            jobs, self._pending = self._pending[: self.max_jobs], self._pending[self.max_jobs :]
            if not self._pending:
                self._wake.clear()
            try:
                socs, stds, states = await loop.run_in_executor(
                    self._executor,
                    step_jobs,
                    self.estimator,
                    [j.samples for j in jobs],
                    np.stack([j.state for j in jobs]),
                    [j.reset_before for j in jobs],
                )
            except Exception as error:  # the model failed: every job fails, nothing commits
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs), max(len(j.samples) for j in jobs))
            for k, (job, soc, state) in enumerate(zip(jobs, socs, states)):
                if not job.future.done():  # a cancelled request simply drops its result
                    job.future.set_result((soc, None if stds is None else stds[k], state))
