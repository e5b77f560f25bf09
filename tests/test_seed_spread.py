"""benchmarks/seed_spread.py: the README's mean ± spread over seeds from benchmark.json files."""

from __future__ import annotations

import pytest

from benchmark_scripts import load


@pytest.fixture(scope="module")
def seed_spread():
    return load("seed_spread")


def _benchmark(rmse: float, not_converged: list[str]) -> dict:
    rows = [{"temperature_c": t, "rmse_pct": rmse + t / 100, "mae_pct": rmse / 2}
            for t in (-20.0, 25.0)]
    return {"models": [{
        "name": "lstm", "rmse_pct": rmse, "by_temperature": rows,
        "by_condition": [{"cycle": "a"}, {"cycle": "b"}],
        "scenarios": {"cold_start": {"rmse_pct": rmse + 1, "convergence_s_median": 100.0,
                                     "not_converged_cycles": not_converged},
                      "degraded_sensors": {"rmse_pct": rmse + 2}},
    }]}


def test_mean_and_sample_spread_over_seeds(seed_spread):
    text = seed_spread.tables([_benchmark(1.0, []), _benchmark(2.0, ["a"]),
                               _benchmark(3.0, ["a", "b"])])
    row = next(line for line in text.splitlines() if line.startswith("| lstm | 3 |"))
    # mean 2, sample standard deviation 1 (ddof=1), as the README reads it
    assert "| 2.00 ± 1.00 % | 3.00 ± 1.00 % | 4.00 ± 1.00 % | 1.00 ± 0.50 % |" in row
    assert row.endswith("| 100 ± 0 s | 1.0 ± 1.0 of 2 |")
    per_temperature = text.splitlines()[-1]
    assert per_temperature == "| lstm | 1.80 ± 1.00 % | 2.25 ± 1.00 % |"


def test_one_run_has_no_spread(seed_spread):
    assert "| lstm | 1 | 1.50 % |" in seed_spread.tables([_benchmark(1.5, [])])
