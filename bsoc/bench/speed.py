"""Speed of SOC models through the same interface the service uses.

All models are measured in one process, *interleaved*: every repeat times each model in
turn, so a slow moment of the machine hits all of them alike and the ratios hold even
when the absolute numbers wander. We report medians and the spread (p10..p90) of repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Steppable(Protocol):
    """What latency and throughput need of a model: the service's streaming interface."""

    def initial_state(self) -> np.ndarray: ...

    def step_batch(
        self, samples: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


class Predictor(Protocol):
    def predict(self, samples: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SpeedPlan:
    """How long to measure. ``quick`` is for CI-sized runs; the default for reported figures."""

    repeats: int = 7
    latency_steps: int = 2000
    batch_sizes: tuple[int, ...] = (1, 16, 256, 4096)
    batch_samples: int = 200_000  # samples per (model, batch size, repeat), at least 3 steps
    sequence_samples: int = 20_000
    # The machine's limit (bsoc.bench.limit): a float32 (M, K) @ (K, N) product shaped like
    # the Table-1 network's recurrent map (K = 256, N = 4 x 256) over a large batch.
    gemm_shape: tuple[int, int, int] = (4096, 256, 1024)

    @classmethod
    def quick(cls) -> SpeedPlan:
        return cls(
            repeats=3,
            latency_steps=300,
            batch_sizes=(1, 64, 1024),
            batch_samples=20_000,
            sequence_samples=3_000,
            gemm_shape=(1024, 256, 1024),
        )


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "p90": float(np.percentile(array, 90)),
    }


def _interleaved(
    names: Sequence[str], repeats: int, measure: Callable[[int], float]
) -> dict[str, dict[str, float]]:
    """The spread of ``measure(index)`` per model over ``repeats`` rounds of every model."""
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for index, name in enumerate(names):
            results[name].append(measure(index))
    return {name: _spread(values) for name, values in results.items()}


def representative_samples(samples: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows of real test samples (tiled if needed) with strictly increasing time."""
    reps = int(np.ceil(count / len(samples)))
    rows = np.tile(samples, (reps, 1))[:count].copy()
    rows[:, 0] = np.arange(count, dtype=np.float64)
    return rows


def step_latency_us(
    models: dict[str, Steppable], samples: np.ndarray, plan: SpeedPlan
) -> dict[str, dict[str, float]]:
    """One stream, one sample per call, state carried: the cost a live cell sees per sample."""
    names = list(models)
    rows = representative_samples(samples, plan.latency_steps)

    def measure(index: int) -> float:
        model = models[names[index]]
        state = model.initial_state()[None, :]
        for warm in range(10):
            _, state = model.step_batch(rows[warm : warm + 1], state)
        start = time.perf_counter()
        for t in range(len(rows)):
            _, state = model.step_batch(rows[t : t + 1], state)
        return (time.perf_counter() - start) / len(rows) * 1e6

    return _interleaved(names, plan.repeats, measure)


def batched_throughput(
    models: dict[str, Steppable], samples: np.ndarray, plan: SpeedPlan,
    *, batched_only: Collection[str] = (),
) -> dict[str, dict[int, dict[str, float]]]:
    """Many streams, one step each per call: samples/s as the service batches streams.

    Models in ``batched_only`` skip batch 1: their one-stream figure is
    :func:`step_latency_us` (a slow peer would spend minutes on the batch-1 samples).
    """
    out: dict[str, dict[int, dict[str, float]]] = {name: {} for name in models}
    for batch in plan.batch_sizes:
        names = [name for name in models if batch > 1 or name not in batched_only]
        steps = max(3, plan.batch_samples // batch)
        rows = representative_samples(samples, batch * (steps + 1)).reshape(steps + 1, batch, -1)
        rows[:, :, 0] = np.arange(steps + 1, dtype=np.float64)[:, None]

        def measure(index: int, rows: np.ndarray = rows, batch: int = batch,
                    names: list[str] = names) -> float:
            model = models[names[index]]
            states = np.repeat(model.initial_state()[None, :], batch, axis=0)
            _, states = model.step_batch(rows[0], states)
            start = time.perf_counter()
            for t in range(1, len(rows)):
                _, states = model.step_batch(rows[t], states)
            return batch * (len(rows) - 1) / (time.perf_counter() - start)

        for name, spread in _interleaved(names, plan.repeats, measure).items():
            out[name][batch] = spread
    return out


def sequence_throughput(
    models: dict[str, Predictor], samples: np.ndarray, plan: SpeedPlan
) -> dict[str, dict[str, float]]:
    """Whole sequences offline (``predict``): samples/s for batch re-analysis of logged data."""
    names = list(models)
    rows = representative_samples(samples, plan.sequence_samples)

    def measure(index: int) -> float:
        start = time.perf_counter()
        models[names[index]].predict(rows)
        return len(rows) / (time.perf_counter() - start)

    return _interleaved(names, plan.repeats, measure)
