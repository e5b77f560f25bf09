"""Streams of one estimator in memory, for tests that compare streaming with ``predict``."""

from __future__ import annotations

import numpy as np

from bsoc.estimator import SocEstimator


class StreamSet:
    """Per-stream state for a fixed estimator: ``step(sample)`` for one cell, ``step_batch`` for many.

    The tests step estimators with it to prove that streaming equals ``predict``.
    """

    def __init__(self, estimator: SocEstimator, n_streams: int = 1) -> None:
        self.estimator = estimator
        self.states = np.repeat(estimator.initial_state()[None, :], n_streams, axis=0)

    def step(self, sample: np.ndarray | list[float], stream: int = 0) -> float:
        row = np.asarray(sample, dtype=np.float64).reshape(1, -1)
        soc, new = self.estimator.step_batch(row, self.states[stream : stream + 1])
        self.states[stream] = new[0]
        return float(soc[0])

    def step_batch(self, samples: np.ndarray) -> np.ndarray:
        soc, self.states = self.estimator.step_batch(np.asarray(samples, np.float64), self.states)
        return soc

    def reset(self, stream: int) -> None:
        self.states[stream] = self.estimator.initial_state()
