"""The search for the fusion filter's settings on the tuning split (validation).

The LSTM errs on cycles it was not trained on as it will on new ones, which its training
split cannot show, so the settings are chosen on the VALIDATION split in the three
evaluation scenarios (from start, cold start, degraded sensors). The LSTM runs once per
cycle and scenario (:func:`tuning_runs`); every candidate only re-runs the filter over its
outputs (:func:`score`). The objective is the mean SOC RMSE over cycles and scenarios plus
a penalty for the +-2 sigma coverage of the WORST (scenario, temperature) cell outside
``FusionGrid.coverage``: the goal holds in every scenario at every temperature, and a mean
over cells (or samples pooled over scenarios) lets a wide band in one cell hide a narrow
one in another. Test cycles are never read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.evaluate import SCENARIOS, ScenarioSettings, counted_samples, scenario_inputs
from bsoc.fusion.estimator import ECM_TUNED_SETTINGS, FusionSocEstimator
from bsoc.nn.estimator import LstmSocEstimator

Progress = Callable[[str, float], None]
# Settings searched only with the ECM (see FusionGrid), beside the LSTM's.
ECM_SEARCHED = ("voltage_factor", *ECM_TUNED_SETTINGS)


@dataclass(frozen=True)
class FusionGrid:
    """The candidate values of the tuned settings.

    The LSTM's settings are searched as a full grid (with the ECM at ``voltage_start``),
    then, with the ECM, the voltage noise factor, the variance scale and the ECM's slow
    voltage error together at the best of the rest: what the filter weighs is the ratio of
    the two measurements' noises, and at a guessed factor the first stage can only move
    the LSTM's side of it. The factor multiplies the EKF's own voltage noise, which treats
    every sample's model error as new; inside the fusion, beside a second measurement, the
    ECM's error (correlated over a whole drive in the cold) must count for far less, hence
    factors of tens to hundreds, unless the slow part of that error is a state of its own.
    Then the RC voltages' prior at a start (``rc_std_v``, ``rc_load_fraction``): a start
    under load, as after a reset mid-drive, finds them far from the rest's zero. The last
    two stages are searched twice in turn, as each one's best depends on the other.
    """

    variance_scale: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    bias_fraction: Sequence[float] = (0.5, 0.8)
    bias_tau_s: Sequence[float] = (600.0, 3000.0)
    noise_tau_s: Sequence[float] = (30.0, 100.0, 300.0)
    offset_std_c: Sequence[float] = (0.0, 0.005, 0.01)
    voltage_factor: Sequence[float] = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
    voltage_bias_std_v: Sequence[float] = (0.0, 0.01)
    rc_std_v: Sequence[float] = (0.02, 0.05, 0.1)
    rc_load_fraction: Sequence[float] = (0.0, 0.5)
    voltage_start: float = 128.0
    coverage: tuple[float, float] = (0.90, 0.98)  # wanted +-2 sigma coverage per temperature
    coverage_weight_pct: float = 5.0  # RMSE points one unit of coverage outside it costs

    def lstm_candidates(self, with_ecm: bool) -> list[dict[str, float]]:
        axes = {"variance_scale": self.variance_scale, "bias_fraction": self.bias_fraction,
                "bias_tau_s": self.bias_tau_s, "noise_tau_s": self.noise_tau_s,
                "offset_std_c": self.offset_std_c}
        extra = {"voltage_factor": self.voltage_start} if with_ecm else {}
        return [{**dict(zip(axes, values, strict=True)), **extra}
                for values in itertools.product(*axes.values())]

    def searched(self, with_ecm: bool) -> dict[str, list[float]]:
        names = ["variance_scale", "bias_fraction", "bias_tau_s", "noise_tau_s",
                 "offset_std_c", *(list(ECM_SEARCHED) if with_ecm else [])]
        return {name: [float(v) for v in getattr(self, name)] for name in names}

    def miss(self, coverage: dict[str, dict[float, float]]) -> float:
        """How far the worst (scenario, temperature) cell's +-2 sigma coverage lies outside
        the wanted band (0 when every cell is inside it).

        The worst cell, not a sum over cells: a band somewhat too wide everywhere then
        costs no more than one cell just outside, so the search prefers a band that is
        never overconfident. On the Panasonic data (two validation cycles per
        temperature) a sum over cells chose settings that fit the validation cycles'
        coverage at the price of accuracy, and did not carry over to the test cycles."""
        low, high = self.coverage
        return max((max(low - c, c - high, 0.0) for cells in coverage.values()
                    for c in cells.values()), default=0.0)


@dataclass
class TuningRun:
    """One validation sequence: inputs, truth, the LSTM's SOC, which samples count."""

    samples: np.ndarray
    truth: np.ndarray
    lstm_soc: np.ndarray
    counted: np.ndarray
    temperature_c: float
    scenario: str
    cycle: str


def tuning_runs(lstm: LstmSocEstimator, cycles: list[Cycle],
                settings: ScenarioSettings) -> list[TuningRun]:
    """Every cycle in every scenario, with the LSTM's SOC computed once."""
    runs = []
    for scenario in SCENARIOS:
        inputs = scenario_inputs(cycles, scenario, settings)
        predicted = lstm.predict_many([samples for samples, _ in inputs])
        for cycle, (samples, truth), lstm_soc in zip(cycles, inputs, predicted, strict=True):
            counted = counted_samples(samples[:, 0] - samples[0, 0], scenario, settings)
            runs.append(TuningRun(samples, truth, lstm_soc, counted,
                                  float(cycle.meta.ambient_c), scenario, cycle.meta.name))
    return runs


def counted_errors(estimator: FusionSocEstimator, runs: list[TuningRun]
                   ) -> Iterator[tuple[TuningRun, np.ndarray, np.ndarray]]:
    """Each run with the filter's SOC error and standard deviation on its counted samples."""
    for run in runs:
        soc, std = estimator.filter_outputs(run.samples, run.lstm_soc)
        yield run, (soc - run.truth)[run.counted], std[run.counted]


def score(estimator: FusionSocEstimator, runs: list[TuningRun]) -> dict[str, Any]:
    """Mean RMSE (percentage points) over the runs and the +-2 sigma coverage per scenario
    and temperature (``{scenario: {temperature: fraction}}``, samples pooled over a cell's
    cycles)."""
    rmse, inside, counts = [], {}, {}
    for run, error, std in counted_errors(estimator, runs):
        rmse.append(100 * float(np.sqrt(np.mean(error**2))))
        cell = (run.scenario, run.temperature_c)
        inside[cell] = inside.get(cell, 0) + int(np.sum(np.abs(error) <= 2 * std))
        counts[cell] = counts.get(cell, 0) + len(error)
    coverage: dict[str, dict[float, float]] = {}
    for scenario, temperature in sorted(counts):
        cell = (scenario, temperature)
        coverage.setdefault(scenario, {})[temperature] = inside[cell] / max(counts[cell], 1)
    return {"rmse_pct": float(np.mean(rmse)), "coverage_2_sigma": coverage}


@dataclass
class SettingsSearch:
    """Every candidate scored (rows of settings, RMSE, coverage, objective) and the best."""

    rows: list[dict[str, Any]]
    names: list[str]
    grid: FusionGrid

    @property
    def best(self) -> dict[str, Any]:
        return min(self.rows, key=lambda row: row["objective_pct"])

    @property
    def chosen(self) -> dict[str, float]:
        """The best candidate's settings."""
        return {name: self.best[name] for name in self.names}

    def report(self) -> dict[str, Any]:
        """What was searched, how it was scored and what won (for the model's config.json)."""
        low, high = self.grid.coverage
        with_ecm = "voltage_factor" in self.names
        return {
            "objective": "mean SOC RMSE over cycles x scenarios [pp] + "
                         f"{self.grid.coverage_weight_pct:g} x how far the worst (scenario, "
                         "temperature) cell's +-2 sigma coverage lies outside "
                         f"{low:.0%}-{high:.0%}",
            "grid": self.grid.searched(with_ecm),
            "search": "full grid of the LSTM's settings"
                      + (f" (voltage factor {self.grid.voltage_start:g}), then the voltage "
                         "factor, the variance scale and the slow voltage error together "
                         "at the best, then the RC voltages' start, both twice in turn"
                         if with_ecm else ""),
            "feasible_candidates": sum(self.grid.miss(row["coverage_2_sigma"]) == 0.0
                                       for row in self.rows),
            "best": self.best,
            "top": sorted(self.rows, key=lambda row: row["objective_pct"])[:8],
        }


def score_candidates(base: FusionSocEstimator, runs: list[TuningRun], grid: FusionGrid,
                     candidates: list[dict[str, float]], stage: str,
                     progress: Progress) -> list[dict[str, Any]]:
    """Each candidate's settings with its RMSE, coverage and objective."""
    rows = []
    for index, values in enumerate(candidates):
        row = {**values, **score(base.with_settings(base.settings.with_values(**values)), runs)}
        row["objective_pct"] = (row["rmse_pct"]
                                + grid.coverage_weight_pct * grid.miss(row["coverage_2_sigma"]))
        rows.append(row)
        progress(stage, (index + 1) / len(candidates))
    return rows


def search_settings(base: FusionSocEstimator, runs: list[TuningRun], grid: FusionGrid,
                    progress: Progress) -> SettingsSearch:
    """The grid of the LSTM's settings, then (with the ECM) the voltage factor, the
    variance scale and the slow voltage error together at the best of the rest, then the
    RC voltages' start, these two stages twice in turn; ``base`` holds the settings that
    are not searched (and the first stage's values of the later ones)."""
    with_ecm = base.ecm is not None
    held = {name: getattr(base.settings, name) for name in ECM_TUNED_SETTINGS} if with_ecm else {}
    first = [{**row, **held} for row in grid.lstm_candidates(with_ecm)]
    rows = score_candidates(base, runs, grid, first, "settings grid", progress)
    search = SettingsSearch(rows, list(grid.searched(with_ecm)), grid)
    if with_ecm:  # two rounds: each stage's best depends on the other's
        for stage, axes in 2 * (("voltage noise", ("voltage_factor", "variance_scale",
                                                   "voltage_bias_std_v")),
                                ("RC start", ("rc_std_v", "rc_load_fraction"))):
            best = search.chosen
            values = itertools.product(*(getattr(grid, name) for name in axes))
            candidates = [{**best, **dict(zip(axes, chosen, strict=True))} for chosen in values]
            scored = [{name: row[name] for name in search.names} for row in search.rows]
            search.rows += score_candidates(
                base, runs, grid, [c for c in candidates if c not in scored], stage, progress)
    return search
