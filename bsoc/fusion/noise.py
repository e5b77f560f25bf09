"""The LSTM's measurement noise as a function of what predicts its error.

The LSTM's SOC error is not one number: it is larger in the cold, in its first minutes
(the network starts from a zero state), at rest after a drive in the cold (the relaxing
voltage moves its estimate while the charge stands still), and when its output jitters
with the current pulses. So the filter's noise is a log-linear model of features the filter
can compute from its own memory, sample by sample (:func:`bsoc.fusion.filter.noise_features`):

    log sigma^2 = sum_k beta_k phi_k

``phi``: hat functions of the cell temperature on knots (the training split's ambient
temperatures; they sum to one, so they are the intercept too), log of the recent C-rate,
two exponential decays of the time since start, log of the time at rest, log of the LSTM's
recent variability (the mean square of its SOC change that the coulomb count does not
explain, per second), the LSTM's SOC and a low-SOC hinge.

The coefficients are the maximum-likelihood fit to the LSTM's errors ``r`` on the TRAINING
split (from the first sample and from cold starts, so that the start is represented):
the Gaussian negative log-likelihood ``sum eta + r^2 exp(-eta)`` is convex in beta and
Newton's method finds its minimum. A small penalty on differences of neighbouring
temperature hats keeps an unvisited temperature at its neighbours' level. Errors on the
training split are smaller than elsewhere; the overall scale is tuned on validation
(:mod:`bsoc.fusion.fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.errors import ConfigError
from bsoc.fusion.filter import N_EXTRA_FEATURES, sequence_features
from bsoc.fusion.settings import FusionSettings, NoiseConstants, pack_buffer

EXTRA_FEATURES: tuple[str, ...] = (
    "log_c_rate", "start_decay_1", "start_decay_2", "log_rest", "log_variability",
    "lstm_soc", "low_soc_hinge",
)
assert len(EXTRA_FEATURES) == N_EXTRA_FEATURES
MAX_SAMPLES_PER_SEQUENCE = 20_000  # a 40-hour OCV test must not outweigh the drive cycles


@dataclass(frozen=True)
class NoiseModel:
    """``coef`` (K,) over the features of ``knots_c`` (M temperature hats) + the extras."""

    knots_c: tuple[float, ...]
    coef: np.ndarray
    constants: NoiseConstants = NoiseConstants()

    @property
    def feature_names(self) -> list[str]:
        return [f"temperature_{k:g}C" for k in self.knots_c] + list(EXTRA_FEATURES)

    def buffer(self, capacity_ah: float, settings: FusionSettings | None = None) -> np.ndarray:
        """A filter buffer with this noise model (default settings: for the features)."""
        return pack_buffer(settings or FusionSettings(), self.coef, np.array(self.knots_c),
                           self.constants, capacity_ah)

    def features(self, samples: np.ndarray, lstm_soc: np.ndarray, capacity_ah: float
                 ) -> np.ndarray:
        """Features (T, K) along one clean sequence, as the filter computes them."""
        return sequence_features(self.buffer(capacity_ah), np.ascontiguousarray(samples),
                                 np.ascontiguousarray(lstm_soc, dtype=np.float64))

    def variance(self, features: np.ndarray) -> np.ndarray:
        """sigma^2 (T,) at given features, clamped as the filter clamps it."""
        return np.exp(np.clip(features @ self.coef, np.log(1e-8), np.log(0.25)))

    def to_json(self) -> dict[str, Any]:
        return {"knots_c": list(self.knots_c), "coef": self.coef.tolist(),
                "features": self.feature_names, "constants": self.constants.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoiseModel:
        return cls(tuple(float(k) for k in data["knots_c"]),
                   np.asarray(data["coef"], dtype=np.float64),
                   NoiseConstants.from_json(data["constants"]))


def knots_for(temperatures_c: Sequence[float]) -> tuple[float, ...]:
    """Temperature knots: the distinct (rounded) ambient temperatures seen in training."""
    knots = sorted({float(round(t)) for t in temperatures_c})
    if not knots:
        raise ConfigError("no temperatures to place the noise model's knots on",
                          remedy="train on cycles with an ambient temperature")
    return tuple(knots)


def gaussian_nll(features: np.ndarray, squared_error: np.ndarray, coef: np.ndarray) -> float:
    """Mean negative log-likelihood (without constants) of errors under the model."""
    eta = features @ coef
    return float(np.mean(eta + squared_error * np.exp(-eta)))


def fit_coefficients(
    features: np.ndarray, squared_error: np.ndarray, n_knots: int, *,
    start: np.ndarray | None = None, free: np.ndarray | None = None,
    smoothness: float = 1e-2, ridge: float = 1e-4, iterations: int = 50,
) -> np.ndarray:
    """Newton's method on the penalised Gaussian NLL of ``squared_error`` (N,) given
    ``features`` (N, K) whose first ``n_knots`` columns are the temperature hats.

    ``start`` and ``free`` (a boolean mask): fit only the free coefficients, the others
    held at ``start`` (to re-level a fitted model on other data)."""
    n, k = features.shape
    if n < k:
        raise ConfigError(f"{n} samples cannot fit a {k}-feature noise model",
                          remedy="train the LSTM on more data")
    penalty = np.zeros((k, k))
    for j in range(n_knots - 1):  # smoothness across neighbouring temperatures
        d = np.zeros(k)
        d[j], d[j + 1] = 1.0, -1.0
        penalty += smoothness * np.outer(d, d)
    penalty[n_knots:, n_knots:] += ridge * np.eye(k - n_knots)
    free = np.ones(k, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    if start is None:
        coef = np.zeros(k)
        coef[:n_knots] = np.log(max(float(np.mean(squared_error)), 1e-10))
    else:
        coef = np.asarray(start, dtype=np.float64).copy()

    def objective(c: np.ndarray) -> float:
        return gaussian_nll(features, squared_error, c) + float(c @ penalty @ c)

    value = objective(coef)
    for _ in range(iterations):
        w = squared_error * np.exp(-(features @ coef))
        gradient = features.T @ (1.0 - w) / n + 2 * penalty @ coef
        hessian = (features * w[:, None]).T @ features / n + 2 * penalty
        step = np.zeros(k)
        step[free] = np.linalg.solve(hessian[np.ix_(free, free)] + 1e-12 * np.eye(free.sum()),
                                     gradient[free])
        size = 1.0
        while size > 1e-6:
            trial = coef - size * step
            trial_value = objective(trial)
            if trial_value <= value:
                break
            size *= 0.5
        else:
            break
        converged = value - trial_value < 1e-12
        coef, value = trial, trial_value
        if converged:
            break
    return coef


Evidence = tuple[np.ndarray, np.ndarray]  # features (N, K) and squared errors (N,)


def relevel(model: NoiseModel, sequences: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
            capacity_ah: float) -> tuple[NoiseModel, dict[str, Any], Evidence]:
    """Re-fit only the temperature levels of ``model`` on other sequences (validation),
    its shape (start, rest, C-rate, variability, SOC) kept: where the LSTM errs more than
    on its own training split, and by how much at each temperature. Returns the model,
    a report and the data it was fitted on."""
    features, squared_error = stacked(model, sequences, capacity_ah)
    n_knots = len(model.knots_c)
    free = np.zeros(len(model.coef), dtype=bool)
    free[:n_knots] = True
    coef = fit_coefficients(features, squared_error, n_knots, start=model.coef, free=free)
    releveled = NoiseModel(model.knots_c, coef, model.constants)
    report = {
        "method": "temperature levels re-fitted by maximum likelihood, shape kept",
        "samples": int(len(squared_error)),
        "nll_before": gaussian_nll(features, squared_error, model.coef),
        "nll_after": gaussian_nll(features, squared_error, coef),
        "level_change": {name: float(after - before) for name, before, after in zip(
            model.feature_names[:n_knots], model.coef[:n_knots], coef[:n_knots], strict=True)},
    }
    return releveled, report, (features, squared_error)


def stacked(model: NoiseModel, sequences: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
             capacity_ah: float) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, K) and squared LSTM errors (N,) of ``(samples, lstm_soc, truth)``
    sequences, long ones thinned evenly to ``MAX_SAMPLES_PER_SEQUENCE``."""
    rows, errors = [], []
    for samples, lstm_soc, truth in sequences:
        stride = max(1, int(np.ceil(len(samples) / MAX_SAMPLES_PER_SEQUENCE)))
        rows.append(model.features(samples, lstm_soc, capacity_ah)[::stride])
        errors.append((lstm_soc - truth)[::stride] ** 2)
    if not rows:
        raise ConfigError("no sequences to fit the noise model on",
                          remedy="assign cycles to the 'train' split")
    return np.concatenate(rows), np.concatenate(errors)


def fit_noise_model(
    sequences: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    capacity_ah: float,
    knots_c: Sequence[float],
    constants: NoiseConstants = NoiseConstants(),
) -> tuple[NoiseModel, dict[str, Any], Evidence]:
    """Fit on ``(samples (T, 4), lstm_soc (T,), true_soc (T,))`` of TRAINING sequences.

    Long sequences are thinned to at most ``MAX_SAMPLES_PER_SEQUENCE`` samples (evenly), so
    that every cycle counts about alike. Returns the model, a fit report and the data.
    """
    blank = NoiseModel(tuple(knots_c), np.zeros(len(knots_c) + N_EXTRA_FEATURES), constants)
    features, squared_error = stacked(blank, sequences, capacity_ah)
    coef = fit_coefficients(features, squared_error, len(knots_c))
    model = NoiseModel(tuple(float(k) for k in knots_c), coef, constants)
    constant = np.zeros_like(coef)
    constant[: len(knots_c)] = np.log(np.mean(squared_error))
    report = {
        "method": "maximum likelihood (Gaussian, log-linear variance), training split",
        "samples": int(len(squared_error)),
        "sequences": len(sequences),
        "nll_constant_variance": gaussian_nll(features, squared_error, constant),
        "nll_model": gaussian_nll(features, squared_error, coef),
        "rmse_pct": 100 * float(np.sqrt(np.mean(squared_error))),
        "coefficients": dict(zip(model.feature_names, coef.tolist(), strict=True)),
    }
    return model, report, (features, squared_error)
