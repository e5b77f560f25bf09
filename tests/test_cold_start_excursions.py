"""benchmarks/cold_start_excursions.py: re-acquisition told apart from late excursions."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_scripts import load
from bsoc.evaluate import measured_convergence_s


@pytest.fixture(scope="module")
def script():
    return load("cold_start_excursions")


def test_a_late_excursion_is_not_a_slow_reacquisition(script) -> None:
    time_s = np.arange(1000.0)
    error = np.full(1000, 1.0)
    error[:10] = 12.0  # the cold start: outside the 5-point band for 10 s
    error[500:503] = 5.5  # a pulse train: three samples out, two in, one out
    error[505] = -6.0
    error[900] = 5.0  # on the band's edge counts as outside, as in bsoc evaluate
    reacquired, spans = script.excursions(time_s, error, 5.0, merge_s=30.0)
    assert reacquired == 10.0
    assert spans == [(500, 505), (900, 900)]
    # the convergence bsoc evaluate reports starts after the last excursion
    assert measured_convergence_s(time_s, error, 5.0) == time_s[spans[-1][1] + 1]


def test_excursions_further_apart_than_the_merge_gap_stay_apart(script) -> None:
    time_s = np.arange(200.0)
    error = np.zeros(200)
    error[[50, 81, 112]] = 7.0
    assert script.excursions(time_s, error, 5.0, merge_s=30.0)[1] == [
        (50, 50), (81, 81), (112, 112)]
    assert script.excursions(time_s, error, 5.0, merge_s=31.0)[1] == [(50, 112)]


def test_a_model_never_inside_the_band_is_never_reacquired(script) -> None:
    time_s = np.arange(50.0)
    assert script.excursions(time_s, np.full(50, -8.0), 5.0) == (None, [])
    assert script.excursions(time_s, np.zeros(50), 5.0) == (0.0, [])


def test_a_median_is_not_taken_over_a_cycle_never_reached(script) -> None:
    rows = [{"temperature_c": 0.0, "reacquisition_s": 2.0, "convergence_s": None,
             "excursions": [{}]},
            {"temperature_c": 0.0, "reacquisition_s": 4.0, "convergence_s": 10.0,
             "excursions": []}]
    (row,) = script.per_temperature(rows)
    assert row["median_reacquisition_s"] == 3.0
    assert row["median_convergence_s"] is None
    assert row["excursions"] == 1
