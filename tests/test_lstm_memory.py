"""benchmarks/lstm_memory.py: how far back a trained LSTM's output depends on its inputs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_scripts import load
from test_fusion import _lstm
from test_serve_helpers import rows_of


@pytest.fixture(scope="module")
def script():
    return load("lstm_memory")


def test_a_restart_at_the_first_sample_is_the_run_itself(script) -> None:
    samples = rows_of(50)
    assert script.restart_differences(_lstm(), samples, 50).tolist() == [0.0]


def test_each_restart_is_the_network_run_on_the_last_window_alone(script) -> None:
    lstm, samples = _lstm(), rows_of(50)
    diff = script.restart_differences(lstm, samples, 20, stride=7)
    ends = [20, 27, 34, 41, 48]
    full = lstm.predict(samples)
    direct = [100 * abs(lstm.predict(samples[e - 20:e])[-1] - full[e - 1]) for e in ends]
    np.testing.assert_allclose(diff, direct, atol=1e-9)
    # the run from the first sample, given, serves as computed
    np.testing.assert_array_equal(
        script.restart_differences(lstm, samples, 20, stride=7, full=full), diff)
    assert diff.max() > 0  # a fresh state 20 samples back does not give the same output
    assert len(script.restart_differences(lstm, samples, 60)) == 0  # shorter than the window


def test_the_memory_is_the_shortest_window_within_the_tolerance(script) -> None:
    largest = {1000: 0.0, 30: 5.0, 300: 0.05, 100: 0.5}
    assert script.memory_samples(largest, 0.1) == 300
    assert script.memory_samples(largest, 0.01) == 1000
    assert script.memory_samples({30: 5.0, 100: 0.5}, 0.1) is None
