"""The whole fusion fit for one LSTM and one dataset: noise model, then the settings.

1. Capacity: the training cycles' SOC capacity (the one their reference SOC is counted with).
2. Noise model (:mod:`bsoc.fusion.noise`): the LSTM's errors on the TRAINING split, from the
   first sample and from cold starts a quarter and half into each cycle.
3. Its temperature levels re-fitted on the VALIDATION split (its shape kept), since the
   LSTM's errors on its own training split are smaller than elsewhere, and not by the
   same factor at every temperature.
4. The settings (:mod:`bsoc.fusion.tuning`) searched on the validation split in the three
   evaluation scenarios. Without a validation split both 3 and 4 fall back to the training
   split (3 is then skipped: it would re-fit on the data it was fitted on). Test cycles are
   never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.errors import ConfigError
from bsoc.evaluate import SCENARIOS, ScenarioSettings
from bsoc.fusion.estimator import FusionSocEstimator
from bsoc.fusion.noise import NoiseModel, fit_noise_model, knots_for, relevel
from bsoc.fusion.settings import FusionSettings
from bsoc.fusion.tuning import FusionGrid, Progress, TuningRun, search_settings, tuning_runs
from bsoc.nn.estimator import LstmSocEstimator

NOISE_START_FRACTIONS = (0.0, 0.25, 0.5)
# The scenarios whose validation errors re-level the noise model: the degraded sensors'
# are the LSTM's error under other inputs, which the filter's noise must not be sized for.
RELEVEL_SCENARIOS = ("from_start", "cold_start")

ErrorSequence = tuple[np.ndarray, np.ndarray, np.ndarray]  # samples, LSTM SOC, true SOC


@dataclass
class NoiseEvidence:
    """The noise model on the data it was fitted to, for :func:`bsoc.fusion.figures.noise_figure`."""

    train: tuple[NoiseModel, np.ndarray, np.ndarray]
    validation: tuple[NoiseModel, np.ndarray, np.ndarray] | None


def training_capacity(cycles: Sequence[Cycle]) -> float:
    """The capacity the training cycles' reference SOC is counted with (median over cycles)."""
    values = [c.meta.capacity_ah or c.meta.nominal_capacity_ah for c in cycles]
    values = [v for v in values if v and np.isfinite(v) and v > 0]
    if not values:
        raise ConfigError("the training cycles record no capacity",
                          remedy="ingest the data with --capacity")
    return float(np.median(values))


def training_errors(lstm: LstmSocEstimator, train: Sequence[Cycle]) -> list[ErrorSequence]:
    """The LSTM on every training cycle from its first sample and from starts
    ``NOISE_START_FRACTIONS`` into it, so that the network's start is well represented."""
    sequences, truths = [], []
    for cycle in train:
        samples, soc = cycle.samples(), cycle.soc()
        for fraction in NOISE_START_FRACTIONS:
            first = int(fraction * len(samples))
            if len(samples) - first > 1:
                sequences.append(samples[first:])
                truths.append(soc[first:])
    predicted = lstm.predict_many(sequences)
    return list(zip(sequences, predicted, truths, strict=True))


def fit_training_noise(lstm: LstmSocEstimator, train: Sequence[Cycle], capacity_ah: float,
                       progress: Progress) -> tuple[NoiseModel, dict[str, Any], NoiseEvidence]:
    """The noise model fitted to the LSTM's errors on the training split."""
    progress("LSTM on the training split", 0.0)
    errors = training_errors(lstm, train)
    progress("LSTM on the training split", 1.0)
    knots = knots_for([c.meta.ambient_c for c in train])
    noise, report, data = fit_noise_model(errors, capacity_ah, knots)
    return noise, report, NoiseEvidence((noise, *data), None)


def relevel_on_validation(noise: NoiseModel, runs: list[TuningRun], capacity_ah: float,
                          evidence: NoiseEvidence) -> tuple[NoiseModel, dict[str, Any]]:
    """The noise model's temperature levels re-fitted on the validation runs; records the
    re-levelled model and its data in ``evidence``."""
    sequences = [(r.samples, r.lstm_soc, r.truth) for r in runs
                 if r.scenario in RELEVEL_SCENARIOS]
    noise, report, data = relevel(noise, sequences, capacity_ah)
    evidence.validation = (noise, *data)
    return noise, report


def base_estimator(lstm: LstmSocEstimator, noise: NoiseModel, capacity_ah: float,
                   ekf: EkfSocEstimator | None) -> FusionSocEstimator:
    """The estimator the search starts from: default settings, or with the ECM the EKF's
    own RC, rest-start and gating settings and its voltage noise."""
    if ekf is None:
        return FusionSocEstimator(lstm, noise, FusionSettings(), capacity_ah)
    settings = FusionSettings().with_values(
        rc_walk_v=float(ekf.noise.rc_std), rc_std_v=ekf.init.rc_std,
        rest_soc_std=ekf.init.rest_soc_std, gate_sigma=float(ekf.noise.gate_sigma))
    voltage_std = np.atleast_1d(np.asarray(ekf.noise.voltage_std, dtype=np.float64))
    return FusionSocEstimator(lstm, noise, settings, capacity_ah, ecm=ekf.tables,
                              voltage_std=voltage_std)


def fit_fusion(
    lstm: LstmSocEstimator,
    dataset: Dataset,
    *,
    ekf: EkfSocEstimator | None = None,
    grid: FusionGrid | None = None,
    scenario_settings: ScenarioSettings | None = None,
    metadata: dict[str, Any] | None = None,
    on_progress: Progress | None = None,
) -> tuple[FusionSocEstimator, NoiseEvidence]:
    """Fit the noise model on ``dataset``'s train split and tune the settings on its val
    split (train without one); the ECM of ``ekf`` adds the voltage measurement."""
    grid = grid or FusionGrid()
    progress = on_progress or (lambda stage, fraction: None)
    train = dataset.split("train")
    if not train:
        raise ConfigError(f"dataset '{dataset.name}' has no training cycles",
                          remedy="assign cycles to the 'train' split")
    capacity = training_capacity(train)
    noise, noise_report, evidence = fit_training_noise(lstm, train, capacity, progress)

    validation = dataset.split("val")
    tuning_cycles, tuning_split = (validation, "val") if validation else (train, "train")
    progress("LSTM on the tuning split", 0.0)
    runs = tuning_runs(lstm, tuning_cycles, scenario_settings or ScenarioSettings())
    progress("LSTM on the tuning split", 1.0)
    relevel_report = None
    if validation:
        noise, relevel_report = relevel_on_validation(noise, runs, capacity, evidence)

    base = base_estimator(lstm, noise, capacity, ekf)
    search = search_settings(base, runs, grid, progress)
    report = {
        "capacity_ah": capacity,
        "noise_model": noise_report,
        "noise_relevel": relevel_report,
        "tuning": {"split": tuning_split, "cycles": [c.meta.name for c in tuning_cycles],
                   "scenarios": list(SCENARIOS), **search.report()},
        "with_ecm": ekf is not None,
    }
    fused = base.with_settings(base.settings.with_values(**search.chosen))
    fused.metadata = {**(metadata or {}), "fit": report}
    return fused, evidence
