"""Noise tuning of the EKF on the training split (never on validation or test cycles).

The search: a log-spaced grid over three noise levels (SOC random walk, RC random walk, and
a factor on the voltage noise), then one refinement grid around the best point at half the
log-step. The voltage noise of an ECM filter is mostly the model's own voltage error, which
grows fivefold from 25 to -20 degC on the Panasonic cell; so it is searched as
``factor x (ECM voltage RMSE per table temperature on the training cycles)``, not as one
value: one value small enough for 25 degC makes the filter trust a model that errs by 40 mV
at -20 degC, and one large enough for -20 degC wastes the good model at 25 degC.

The objective mirrors the evaluation protocol on *training* cycles: the mean over
cycles of the SOC RMSE tracked from the first sample and from a cold start at
``cold_start_fraction`` into the cycle (where the filter initialises itself, usually under
load, from ``OCV^-1(V - R0 I)`` with a wide covariance). So the tuning rewards both accurate
tracking and fast recovery from a wrong initial SOC.

All candidates x cycles x scenarios run as one batch of streams in lock-step (the filter is
vectorised over streams and the noise settings may differ per stream); shorter sequences are
padded with NaN rows, which the filter skips without touching the state.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bsoc.data.schema import OCV_LOAD_KIND, Cycle
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.filter import InitSettings, NoiseSettings, ekf_step, new_state
from bsoc.errors import ConfigError


def squared_errors(
    step: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    samples: np.ndarray,
    reference: np.ndarray,
    stream_sequence: np.ndarray,
    states: np.ndarray,
    on_progress: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run streams in lock-step; return the sum of squared SOC errors and the count per stream.

    ``samples`` (L, N, 4) and ``reference`` (L, N) hold N NaN-padded sequences;
    stream b follows sequence ``stream_sequence[b]`` from state ``states[b]``.
    """
    total = np.zeros(len(states))
    count = np.zeros(len(states))
    length = samples.shape[0]
    for t in range(length):
        soc, states = step(samples[t, stream_sequence], states)
        ref = reference[t, stream_sequence]
        valid = np.isfinite(ref)
        total += np.where(valid, (soc - np.where(valid, ref, 0.0)) ** 2, 0.0)
        count += valid
        if on_progress is not None and (t + 1) % 500 == 0:
            on_progress((t + 1) / length)
    if on_progress is not None:
        on_progress(1.0)
    return total, count


class NoiseTuner:
    """Estimator: ``fit(tables, train_cycles)`` -> ``best_`` noise settings, ``results_`` table."""

    def __init__(
        self,
        *,
        soc_std: Sequence[float] = (1e-6, 1e-5, 1e-4),
        rc_std: Sequence[float] = (1e-4, 1e-3, 1e-2),
        voltage_factor: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
        refine: bool = True,
        cycles_per_temperature: int = 3,
        cold_start_fraction: float = 0.25,
        gate_sigma: float = 5.0,
    ) -> None:
        self.soc_std = tuple(soc_std)
        self.rc_std = tuple(rc_std)
        self.voltage_factor = tuple(voltage_factor)
        self.refine = refine
        self.cycles_per_temperature = cycles_per_temperature
        self.cold_start_fraction = cold_start_fraction
        self.gate_sigma = gate_sigma

    def select_cycles(self, cycles: Sequence[Cycle]) -> list[Cycle]:
        """Up to ``cycles_per_temperature`` pulse/drive cycles per ambient (sorted by name)."""
        by_ambient: dict[float, list[Cycle]] = defaultdict(list)
        for cycle in sorted(cycles, key=lambda c: c.meta.name):
            if cycle.meta.load_kind != OCV_LOAD_KIND:
                by_ambient[round(cycle.meta.ambient_c)].append(cycle)
        chosen = [
            c for a in sorted(by_ambient) for c in by_ambient[a][: self.cycles_per_temperature]
        ]
        if not chosen:
            raise ConfigError(
                "no pulse or drive cycles in the training split to tune the EKF noise on",
                remedy="put drive cycles into the training split",
            )
        return chosen

    def fit(
        self,
        tables: EcmTables,
        cycles: Sequence[Cycle],
        model_error_v: Sequence[float] | float,
        init: InitSettings | None = None,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> NoiseTuner:
        """Search the grid (and its refinement) on ``cycles``, which must be training cycles.

        ``model_error_v``: the ECM's voltage RMSE (V) per table temperature (or one value);
        the voltage noise is ``voltage_factor`` times it.
        """
        init = init or InitSettings()
        error = np.asarray(model_error_v, dtype=np.float64).reshape(-1)
        if not (np.isfinite(error).all() and (error > 0).all()):
            raise ConfigError(f"model voltage error {error} must be positive and finite")
        chosen = self.select_cycles(cycles)
        sequences, references = [], []
        for cycle in chosen:
            samples, soc = cycle.samples(), cycle.soc()
            start = int(self.cold_start_fraction * len(samples))
            sequences += [samples, samples[start:]]
            references += [soc, soc[start:]]
        length = max(len(s) for s in sequences)
        padded = np.full((length, len(sequences), 4), np.nan)
        reference = np.full((length, len(sequences)), np.nan)
        for n, (s, r) in enumerate(zip(sequences, references, strict=True)):
            padded[: len(s), n], reference[: len(r), n] = s, r

        def evaluate(
            candidates: list[tuple[float, float, float]], label: str
        ) -> list[dict[str, Any]]:
            grid = np.array(candidates)  # (C, 3)
            n_seq = len(sequences)
            stream_candidate = np.repeat(np.arange(len(grid)), n_seq)
            stream_sequence = np.tile(np.arange(n_seq), len(grid))
            noise = NoiseSettings(
                soc_std=grid[stream_candidate, 0],
                rc_std=grid[stream_candidate, 1],
                voltage_std=grid[stream_candidate, 2, None] * error[None, :],
                gate_sigma=self.gate_sigma,
            )
            states = np.repeat(new_state()[None], len(stream_candidate), axis=0)
            total, count = squared_errors(
                lambda x, s: ekf_step(tables, noise, init, x, s),
                padded,
                reference,
                stream_sequence,
                states,
                None if on_progress is None else (lambda f: on_progress(label, f)),
            )
            rmse = np.sqrt(total / np.maximum(count, 1)).reshape(len(grid), -1, 2)  # (C, cycles, 2)
            return [
                {
                    "soc_std": float(g[0]),
                    "rc_std": float(g[1]),
                    "voltage_factor": float(g[2]),
                    "rmse_from_start_pct": 100 * float(r[:, 0].mean()),
                    "rmse_cold_start_pct": 100 * float(r[:, 1].mean()),
                    "objective_pct": 100 * float(r.mean()),
                }
                for g, r in zip(grid, rmse, strict=True)
            ]

        axes = (self.soc_std, self.rc_std, self.voltage_factor)
        results = evaluate(list(itertools.product(*axes)), "noise grid")
        if self.refine:
            best = min(results, key=lambda row: row["objective_pct"])
            centre = (best["soc_std"], best["rc_std"], best["voltage_factor"])
            local = []
            for value, axis in zip(centre, axes, strict=True):
                ratio = np.sqrt(np.exp(np.mean(np.diff(np.log(axis))))) if len(axis) > 1 else 1.0
                local.append(sorted({value / ratio, value, value * ratio}))
            seen = {(r["soc_std"], r["rc_std"], r["voltage_factor"]) for r in results}
            fresh = [c for c in itertools.product(*local) if c not in seen]
            if fresh:
                results += evaluate(fresh, "refinement")
        best = min(results, key=lambda row: row["objective_pct"])
        self.best_ = NoiseSettings(
            soc_std=best["soc_std"],
            rc_std=best["rc_std"],
            voltage_std=best["voltage_factor"] * error,
            gate_sigma=self.gate_sigma,
        )
        self.model_error_v_ = error
        self.objective_pct_ = best["objective_pct"]
        self.results_ = sorted(results, key=lambda row: row["objective_pct"])
        self.cycles_ = [c.meta.name for c in chosen]
        return self

    def report(self) -> dict[str, Any]:
        """What was searched and what won (for the model's config.json)."""
        return {
            "method": "log-grid search + one refinement grid; objective = mean SOC RMSE over "
            "training cycles, from the first sample and from a cold start; voltage noise = "
            "voltage_factor x the ECM's voltage RMSE per table temperature",
            "cold_start_fraction": self.cold_start_fraction,
            "grid": {
                "soc_std": self.soc_std,
                "rc_std": self.rc_std,
                "voltage_factor": self.voltage_factor,
            },
            "model_error_v": self.model_error_v_.tolist(),
            "cycles": self.cycles_,
            "best": self.best_.to_json(),
            "objective_pct": self.objective_pct_,
            "top": self.results_[:5],
        }
