"""Evaluation: exact metrics, scenario definitions, degraded sensors, generic over estimators."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from bsoc.data.dataset import Dataset
from bsoc.estimator import SocEstimator
from bsoc.evaluate import (
    ScenarioSettings,
    degrade_samples,
    error_metrics,
    evaluate,
    evaluate_runs,
    measured_convergence_s,
    measured_reacquisition_s,
    plot_runs,
    run_scenario,
    slowest_and_median,
)


class ConstantEstimator(SocEstimator):
    """Always says 50 %: its errors are known exactly."""

    kind: ClassVar[str] = "constant"

    def initial_state(self) -> np.ndarray:
        return np.zeros(1)

    def step_batch(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(samples), 0.5), states.copy()

    def learnables(self) -> int:
        return 0

    def weight_bytes(self) -> int:
        return 0

    def macs_per_sample(self) -> int:
        return 0

    def save(self, directory, *, force=False):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @classmethod
    def load(cls, directory):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class RecordingEstimator(ConstantEstimator):
    """Remembers what it was fed, to check what each scenario passes in."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, samples: np.ndarray) -> np.ndarray:
        self.seen.append(samples.copy())
        return np.full(len(samples), 0.5)


@pytest.fixture(scope="module")
def test_cycles(toy_dataset: Path) -> list:
    return Dataset.load(toy_dataset).split("test")


def test_error_metrics_are_exact() -> None:
    metrics = error_metrics(np.array([3.0, -4.0, 0.0, 1.0]))
    assert metrics == {"rmse_pct": pytest.approx(np.sqrt(26 / 4)), "mae_pct": 2.0,
                       "max_abs_err_pct": 4.0, "samples": 4}


def test_measured_convergence_is_the_last_exit_from_the_band() -> None:
    time_s = np.arange(10.0)
    assert measured_convergence_s(time_s, np.array([9, 9, 1, 6, 1, 1, 1, 1, 1, 1.0]), 5) == 4.0
    assert measured_convergence_s(time_s, np.zeros(10), 5) == 0.0
    assert measured_convergence_s(time_s, np.array([0] * 9 + [7.0]), 5) is None


def test_reacquisition_is_the_first_entry_into_the_band() -> None:
    time_s = np.arange(10.0) + 100.0  # times count from the run's first sample
    late_exit = np.array([9, 9, 1, 6, 1, 1, 1, 1, 1, 7.0])
    assert measured_reacquisition_s(time_s, late_exit, 5) == 2.0
    assert measured_convergence_s(time_s, late_exit, 5) is None  # the two tell apart
    assert measured_reacquisition_s(time_s, np.array([0] * 9 + [7.0]), 5) == 0.0
    assert measured_reacquisition_s(time_s, np.full(10, -5.0), 5) is None  # edge: outside


def test_the_slowest_time_is_none_when_a_cycle_never_got_there() -> None:
    assert slowest_and_median([3.0, 1.0, 10.0]) == (10.0, 3.0)
    assert slowest_and_median([3.0, None, 1.0]) == (None, 2.0)
    assert slowest_and_median([None]) == (None, None)


def test_from_start_and_cold_start_errors_match_a_direct_computation(test_cycles: list) -> None:
    settings = ScenarioSettings(start_fraction=0.25, convergence_s=100.0)
    result = evaluate(ConstantEstimator(), test_cycles, settings)
    truth = [c.soc() for c in test_cycles]
    all_errors = np.concatenate([100 * (0.5 - soc) for soc in truth])
    assert result["rmse_pct"] == pytest.approx(np.sqrt(np.mean(all_errors**2)))
    assert result["max_abs_err_pct"] == pytest.approx(np.abs(all_errors).max())
    cold_errors, reacquired = [], []
    for cycle, soc in zip(test_cycles, truth):
        first = int(0.25 * len(soc))
        time_s = cycle.frame["time_s"].to_numpy()[first:]
        counted = time_s - time_s[0] >= 100.0
        cold_errors.append(100 * (0.5 - soc[first:][counted]))
        inside = np.flatnonzero(np.abs(100 * (0.5 - soc[first:])) < 5.0)
        reacquired.append(time_s[inside[0]] - time_s[0] if len(inside) else None)
    cold = result["scenarios"]["cold_start"]
    assert [row["reacquisition_s"] for row in cold["by_condition"]] == reacquired
    assert cold["reacquisition_s"] == slowest_and_median(reacquired)[0]
    assert cold["rmse_pct"] == pytest.approx(np.sqrt(np.mean(np.concatenate(cold_errors) ** 2)))
    assert cold["samples"] == sum(len(e) for e in cold_errors)
    assert cold["counted_after_s"] == 100.0 and cold["start_fraction"] == 0.25
    for row, cycle, errors in zip(result["by_condition"], test_cycles, truth):
        assert row["cycle"] == cycle.meta.name
        assert row["temperature_c"] == cycle.meta.ambient_c
        assert row["rmse_pct"] == pytest.approx(np.sqrt(np.mean((100 * (0.5 - errors)) ** 2)))
    assert {row["temperature_c"] for row in result["by_temperature"]} == {
        c.meta.ambient_c for c in test_cycles}


def test_degraded_sensors_corrupt_only_the_inputs_as_stated() -> None:
    settings = ScenarioSettings(temperature_lag_s=50.0, voltage_noise_v=0.002)
    n = 20_000
    samples = np.zeros((n, 4))
    samples[:, 0] = np.arange(n, dtype=float)
    samples[:, 1] = 3.7
    samples[:, 2] = -1.0
    samples[:, 3] = np.where(np.arange(n) < 10, 20.0, 30.0)  # a 10 K step at t = 10 s
    before = samples.copy()
    out = degrade_samples(samples, 2.9, settings, np.random.default_rng(0))
    np.testing.assert_array_equal(samples, before)
    np.testing.assert_allclose(out[:, 2], -1.0 + 0.029)
    noise = out[:, 1] - 3.7
    assert np.std(noise) == pytest.approx(0.002 * np.sqrt(8), rel=0.03)
    lag_time = np.arange(1, 200, dtype=float)
    np.testing.assert_allclose(out[10 : 10 + 199, 3] - 20.0,
                               10 * (1 - np.exp(-lag_time / 50.0)), atol=1e-9)


def test_scenarios_feed_the_estimator_the_right_samples(test_cycles: list) -> None:
    recorder = RecordingEstimator()
    cycle = test_cycles[0]
    run_scenario(recorder, [cycle], "cold_start")
    first = int(0.25 * len(cycle.frame))
    np.testing.assert_array_equal(recorder.seen[0][:, 1],
                                  cycle.frame["voltage_v"].to_numpy()[first:])
    runs = run_scenario(recorder, [cycle], "degraded_sensors")
    np.testing.assert_array_equal(runs[0].soc_true, cycle.soc())  # the truth is untouched
    assert np.all(recorder.seen[1][:, 2] > cycle.frame["current_a"].to_numpy())


def test_runs_make_a_figure(test_cycles: list, tmp_path: Path) -> None:
    _, runs = evaluate_runs(ConstantEstimator(), test_cycles)
    path = plot_runs(runs, tmp_path / "figure.png", title="constant")
    assert path.stat().st_size > 5000
