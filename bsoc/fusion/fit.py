"""The whole fusion fit for one LSTM and one dataset: noise model, then a small grid.

1. Capacity: the training cycles' SOC capacity (the one their reference SOC is counted with).
2. Noise model (:mod:`bsoc.fusion.noise`): the LSTM's errors on the TRAINING split, from the
   first sample and from cold starts a quarter and half into each cycle.
3. Hyperparameters (:class:`~bsoc.fusion.settings.FusionSettings`): a grid over the variance
   scale, the slow share of the error and both time constants, the current offset's prior
   (and, with the ECM, the voltage noise factor), run on the VALIDATION split in the three
   evaluation scenarios (from start, cold start, degraded sensors): the LSTM there errs as it
   will on new cycles, which its training split cannot show. The objective is the mean SOC
   RMSE over cycles and scenarios plus a penalty for +-2 sigma coverage outside
   ``coverage`` at any validation temperature. Before the grid, the noise model's
   temperature levels are re-fitted on the validation runs (its shape kept), since the
   LSTM's errors on its own training split are smaller than elsewhere, and not by the
   same factor at every temperature. Without a validation split the grid runs on the
   training split. Test cycles are never read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.errors import ConfigError
from bsoc.evaluate import (
    SCENARIOS,
    ScenarioSettings,
    counted_samples,
    scenario_inputs,
)
from bsoc.fusion.estimator import FusionSocEstimator
from bsoc.fusion.noise import NoiseModel, fit_noise_model, knots_for, relevel
from bsoc.fusion.settings import FusionSettings
from bsoc.nn.estimator import LstmSocEstimator

NOISE_START_FRACTIONS = (0.0, 0.25, 0.5)


@dataclass(frozen=True)
class FusionGrid:
    """The candidate values of the tuned settings.

    The LSTM's settings are searched as a full grid (with the ECM at ``voltage_start``),
    then, with the ECM, the voltage noise factor alone at the best of them. The factor
    multiplies the EKF's own voltage noise, which treats every sample's model error as
    new; inside the fusion, beside a second measurement, the ECM's error (correlated over
    a whole drive in the cold) must count for far less, hence factors of tens to hundreds.
    """

    variance_scale: Sequence[float] = (0.5, 1.0, 2.0)
    bias_fraction: Sequence[float] = (0.5, 0.8)
    bias_tau_s: Sequence[float] = (600.0, 3000.0)
    noise_tau_s: Sequence[float] = (30.0, 100.0, 300.0)
    offset_std_c: Sequence[float] = (0.0, 0.005, 0.01)
    voltage_factor: Sequence[float] = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
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
                 "offset_std_c", *(["voltage_factor"] if with_ecm else [])]
        return {name: [float(v) for v in getattr(self, name)] for name in names}


def training_capacity(cycles: Sequence[Cycle]) -> float:
    """The capacity the training cycles' reference SOC is counted with (median over cycles)."""
    values = [c.meta.capacity_ah or c.meta.nominal_capacity_ah for c in cycles]
    values = [v for v in values if v and np.isfinite(v) and v > 0]
    if not values:
        raise ConfigError("the training cycles record no capacity",
                          remedy="ingest the data with --capacity")
    return float(np.median(values))


@dataclass
class TuningRun:
    """One validation sequence: inputs, truth, the LSTM's SOC, which samples count."""

    samples: np.ndarray
    truth: np.ndarray
    lstm_soc: np.ndarray
    counted: np.ndarray
    temperature_c: float
    scenario: str


def tuning_runs(lstm: LstmSocEstimator, cycles: list[Cycle],
                settings: ScenarioSettings) -> list[TuningRun]:
    runs = []
    for scenario in SCENARIOS:
        inputs = scenario_inputs(cycles, scenario, settings)
        predicted = lstm.predict_many([samples for samples, _ in inputs])
        for cycle, (samples, truth), lstm_soc in zip(cycles, inputs, predicted, strict=True):
            counted = counted_samples(samples[:, 0] - samples[0, 0], scenario, settings)
            runs.append(TuningRun(samples, truth, lstm_soc, counted,
                                  float(cycle.meta.ambient_c), scenario))
    return runs


def score(estimator: FusionSocEstimator, runs: list[TuningRun]) -> dict[str, Any]:
    """Mean RMSE (percentage points) over the runs and +-2 sigma coverage per temperature."""
    rmse, inside, counts = [], {}, {}
    for run in runs:
        soc, std = estimator.filter_outputs(run.samples, run.lstm_soc)
        error = (soc - run.truth)[run.counted]
        rmse.append(100 * float(np.sqrt(np.mean(error**2))))
        within = np.abs(error) <= 2 * std[run.counted]
        inside[run.temperature_c] = inside.get(run.temperature_c, 0) + int(within.sum())
        counts[run.temperature_c] = counts.get(run.temperature_c, 0) + len(error)
    coverage = {t: inside[t] / max(counts[t], 1) for t in sorted(counts)}
    return {"rmse_pct": float(np.mean(rmse)), "coverage_2_sigma": coverage}


@dataclass
class NoiseEvidence:
    """The noise model on the data it was fitted to, for :func:`bsoc.fusion.figures.noise_figure`."""

    train: tuple[NoiseModel, np.ndarray, np.ndarray]
    validation: tuple[NoiseModel, np.ndarray, np.ndarray] | None


def fit_fusion(
    lstm: LstmSocEstimator,
    dataset: Dataset,
    *,
    ekf: EkfSocEstimator | None = None,
    grid: FusionGrid | None = None,
    scenario_settings: ScenarioSettings | None = None,
    metadata: dict[str, Any] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
) -> tuple[FusionSocEstimator, NoiseEvidence]:
    """Fit the noise model on ``dataset``'s train split and tune the settings on its val
    split (train without one); the ECM of ``ekf`` adds the voltage measurement."""
    grid = grid or FusionGrid()
    scenario_settings = scenario_settings or ScenarioSettings()
    progress = on_progress or (lambda stage, fraction: None)
    train = dataset.split("train")
    if not train:
        raise ConfigError(f"dataset '{dataset.name}' has no training cycles",
                          remedy="assign cycles to the 'train' split")
    capacity = training_capacity(train)

    progress("LSTM on the training split", 0.0)
    sequences, truths = [], []
    for cycle in train:
        samples, soc = cycle.samples(), cycle.soc()
        for fraction in NOISE_START_FRACTIONS:
            first = int(fraction * len(samples))
            if len(samples) - first > 1:
                sequences.append(samples[first:])
                truths.append(soc[first:])
    predicted = lstm.predict_many(sequences)
    progress("LSTM on the training split", 1.0)
    knots = knots_for([c.meta.ambient_c for c in train])
    noise, noise_report, train_data = fit_noise_model(
        list(zip(sequences, predicted, truths, strict=True)), capacity, knots)
    evidence = NoiseEvidence((noise, *train_data), None)

    validation = dataset.split("val")
    tuning_cycles, tuning_split = (validation, "val") if validation else (train, "train")
    progress("LSTM on the tuning split", 0.0)
    runs = tuning_runs(lstm, tuning_cycles, scenario_settings)
    progress("LSTM on the tuning split", 1.0)
    relevel_report = None
    if validation:
        noise, relevel_report, validation_data = relevel(
            noise, [(r.samples, r.lstm_soc, r.truth) for r in runs
                    if r.scenario in ("from_start", "cold_start")], capacity)
        evidence.validation = (noise, *validation_data)
    base_settings = FusionSettings()
    voltage_std = None
    if ekf is not None:
        voltage_std = np.atleast_1d(np.asarray(ekf.noise.voltage_std, dtype=np.float64))
        base_settings = base_settings.with_values(
            rc_walk_v=float(ekf.noise.rc_std), rc_std_v=ekf.init.rc_std,
            rest_soc_std=ekf.init.rest_soc_std, gate_sigma=float(ekf.noise.gate_sigma))
    base = FusionSocEstimator(lstm, noise, base_settings, capacity,
                              ecm=None if ekf is None else ekf.tables, voltage_std=voltage_std)
    low, high = grid.coverage

    def miss(row: dict[str, Any]) -> float:
        return sum(max(low - c, c - high, 0.0) for c in row["coverage_2_sigma"].values())

    def evaluate(candidates: list[dict[str, float]], stage: str) -> list[dict[str, Any]]:
        rows = []
        for index, values in enumerate(candidates):
            row = {**values, **score(base.with_settings(base_settings.with_values(**values)),
                                     runs)}
            row["objective_pct"] = row["rmse_pct"] + grid.coverage_weight_pct * miss(row)
            rows.append(row)
            progress(stage, (index + 1) / len(candidates))
        return rows

    with_ecm = ekf is not None
    results = evaluate(grid.lstm_candidates(with_ecm), "settings grid")
    names = list(grid.searched(with_ecm))
    if with_ecm:
        best = min(results, key=lambda row: row["objective_pct"])
        seen = {best["voltage_factor"]}
        results += evaluate([{**{k: best[k] for k in names}, "voltage_factor": f}
                             for f in grid.voltage_factor if f not in seen], "voltage noise")
    feasible = [row for row in results if miss(row) == 0.0]
    best = min(results, key=lambda row: row["objective_pct"])
    chosen = base_settings.with_values(**{k: best[k] for k in names})
    report = {
        "capacity_ah": capacity,
        "noise_model": noise_report,
        "noise_relevel": relevel_report,
        "tuning": {
            "split": tuning_split,
            "cycles": [c.meta.name for c in tuning_cycles],
            "scenarios": list(SCENARIOS),
            "objective": "mean SOC RMSE over cycles x scenarios [pp] + "
                         f"{grid.coverage_weight_pct:g} x the +-2 sigma coverage outside "
                         f"{low:.0%}-{high:.0%}, summed over temperatures",
            "grid": grid.searched(with_ecm),
            "search": "full grid of the LSTM's settings"
                      + (f" (voltage factor {grid.voltage_start:g}), then the voltage factor "
                         "alone at the best" if with_ecm else ""),
            "feasible_candidates": len(feasible),
            "best": best,
            "top": sorted(results, key=lambda row: row["objective_pct"])[:8],
        },
        "with_ecm": with_ecm,
    }
    fused = FusionSocEstimator(lstm, noise, chosen, capacity,
                               ecm=None if ekf is None else ekf.tables, voltage_std=voltage_std,
                               metadata={**(metadata or {}), "fit": report})
    return fused, evidence
