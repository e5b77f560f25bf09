"""Accuracy of any :class:`~bsoc.estimator.SocEstimator` on whole cycles, in three scenarios.

* ``from_start``: the estimator starts from its initial state at the cycle's first sample.
* ``cold_start``: it starts from its initial state ``start_fraction`` (25 %) into the cycle,
  knowing nothing of the SOC there; the error is counted only after ``convergence_s``
  (stated, recorded). Also measured: the time of the first sample with |error| below
  ``converged_below_pct`` (re-acquisition), and the time after which it stays below to the
  end of the cycle (convergence). A model back in seconds that strays beyond the band for a
  moment hours later has a convergence time of hours: the two together tell which.
* ``degraded_sensors``: from the first sample, but the *inputs* are corrupted the way cheap
  sensors are (the truth is not): a current offset of +1 % of 1C, voltage noise three times
  the nominal sensor noise, and a temperature sensor that lags with a first-order time
  constant.

Errors are SOC percentage points. Overall metrics pool all counted samples of all cycles;
``by_condition`` has one row per cycle (with its ambient temperature), ``by_temperature``
pools per ambient temperature. A model with an uncertainty also gets ``calibration``: the
fractions of counted samples whose true SOC lies within 1 and 2 of its standard deviations,
pooled and per ambient temperature. Results are plain dicts shaped like a model entry of the
``benchmark.json`` (docs/benchmark.md): top-level metrics are ``from_start``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.errors import ConfigError
from bsoc.estimator import SocEstimator

SCENARIOS: tuple[str, ...] = ("from_start", "cold_start", "degraded_sensors")
# Cycles predicted together, shortest first: padding stays small, memory bounded.
PREDICT_BATCH = 16


@dataclass(frozen=True)
class ScenarioSettings:
    """Everything that defines the scenarios; recorded with every result."""

    start_fraction: float = 0.25
    convergence_s: float = 300.0
    converged_below_pct: float = 5.0
    current_offset_c_rate: float = 0.01
    voltage_noise_v: float = 0.001  # assumed nominal voltage sensor noise (1 sigma)
    voltage_noise_factor: float = 3.0
    temperature_lag_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_fraction < 1.0:
            raise ConfigError(f"start_fraction {self.start_fraction} must be in [0, 1)",
                              remedy="use e.g. 0.25")
        if self.voltage_noise_factor < 1.0:
            raise ConfigError("voltage_noise_factor must be >= 1 (it multiplies the noise)",
                              remedy="use e.g. 3")

    def degraded_description(self) -> str:
        return (f"current offset +{self.current_offset_c_rate:.0%} of 1C, voltage noise "
                f"{self.voltage_noise_factor:g}x the nominal {self.voltage_noise_v * 1e3:g} mV, "
                f"temperature sensor lag {self.temperature_lag_s:g} s (first order)")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "degraded_description": self.degraded_description()}


@dataclass
class CycleRun:
    """One cycle in one scenario: the estimate against the truth, and which samples count."""

    cycle: str
    temperature_c: float
    time_s: np.ndarray  # (T,) seconds since the estimator started
    soc_true: np.ndarray  # (T,)
    soc_est: np.ndarray  # (T,)
    counted: np.ndarray  # (T,) bool
    convergence_s: float | None = None  # cold start: measured, None if never within the band
    reacquisition_s: float | None = None  # cold start: first within the band, None if never
    soc_std: np.ndarray | None = None  # (T,) the model's own standard deviation, if it has one

    @property
    def error_pct(self) -> np.ndarray:
        return 100.0 * (self.soc_est - self.soc_true)


def degrade_samples(
    samples: np.ndarray, nominal_capacity_ah: float, settings: ScenarioSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    """A copy of ``samples`` as seen through degraded sensors (see module docstring)."""
    out = samples.copy()
    out[:, 2] += settings.current_offset_c_rate * nominal_capacity_ah
    extra_sigma = settings.voltage_noise_v * np.sqrt(settings.voltage_noise_factor**2 - 1.0)
    out[:, 1] += rng.normal(0.0, extra_sigma, len(out))
    if settings.temperature_lag_s > 0:
        alpha = 1.0 - np.exp(-np.diff(samples[:, 0]) / settings.temperature_lag_s)
        lagged = out[:, 3]
        for k in range(1, len(out)):
            lagged[k] = lagged[k - 1] + alpha[k - 1] * (samples[k, 3] - lagged[k - 1])
    return out


def measured_convergence_s(
    time_s: np.ndarray, error_pct: np.ndarray, band_pct: float
) -> float | None:
    """Time after which |error| stays below ``band_pct`` to the end; None if it never does."""
    outside = np.flatnonzero(np.abs(error_pct) >= band_pct)
    if len(outside) == 0:
        return 0.0
    if outside[-1] == len(error_pct) - 1:
        return None
    return float(time_s[outside[-1] + 1] - time_s[0])


def measured_reacquisition_s(
    time_s: np.ndarray, error_pct: np.ndarray, band_pct: float
) -> float | None:
    """Time of the first sample with |error| below ``band_pct``; None if there is none."""
    inside = np.flatnonzero(np.abs(error_pct) < band_pct)
    return float(time_s[inside[0]] - time_s[0]) if len(inside) else None


def scenario_inputs(
    cycles: Iterable[Cycle], scenario: str, settings: ScenarioSettings | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(samples (T, 4), true SOC (T,)) of every cycle as ``scenario`` presents it."""
    settings = settings or ScenarioSettings()
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}", remedy=f"use one of {SCENARIOS}")
    inputs = []
    for index, cycle in enumerate(cycles):
        samples, soc = cycle.samples(), cycle.soc()
        if scenario == "cold_start":
            first = int(settings.start_fraction * len(samples))
            samples, soc = samples[first:], soc[first:]
        elif scenario == "degraded_sensors":
            rng = np.random.default_rng([settings.seed, index])
            samples = degrade_samples(samples, cycle.meta.nominal_capacity_ah, settings, rng)
        inputs.append((samples, soc))
    return inputs


def counted_samples(time_s: np.ndarray, scenario: str, settings: ScenarioSettings) -> np.ndarray:
    """Which samples of a run count: after a cold start only those past ``convergence_s``."""
    if scenario == "cold_start":
        return time_s >= settings.convergence_s
    return np.ones(len(time_s), dtype=bool)


def run_scenario(
    estimator: SocEstimator, cycles: Iterable[Cycle], scenario: str,
    settings: ScenarioSettings | None = None, on_cycle: Callable[[str], None] | None = None,
) -> list[CycleRun]:
    """Run ``estimator`` through every cycle as ``scenario`` prescribes.

    ``on_cycle(name)`` is called after each cycle (for progress bars). A model with an
    uncertainty also records its SOC standard deviation per sample.
    """
    settings = settings or ScenarioSettings()
    cycles = list(cycles)
    inputs = scenario_inputs(cycles, scenario, settings)
    by_length = sorted(range(len(cycles)), key=lambda k: len(inputs[k][1]))
    estimates: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for batch in range(0, len(cycles), PREDICT_BATCH):
        chosen = by_length[batch : batch + PREDICT_BATCH]
        estimates.update(zip(chosen, estimator.predict_many_with_std(
            [inputs[k][0] for k in chosen])))
        for k in chosen:
            if on_cycle is not None:
                on_cycle(cycles[k].meta.name)
    runs = []
    for index, (cycle, (samples, soc)) in enumerate(zip(cycles, inputs)):
        time_s = samples[:, 0] - samples[0, 0]
        estimate, std = estimates[index]
        run = CycleRun(cycle.meta.name, float(cycle.meta.ambient_c), time_s, soc,
                       np.asarray(estimate, dtype=np.float64),
                       counted=counted_samples(time_s, scenario, settings),
                       soc_std=None if std is None else np.asarray(std, dtype=np.float64))
        if scenario == "cold_start":
            run.convergence_s = measured_convergence_s(time_s, run.error_pct,
                                                       settings.converged_below_pct)
            run.reacquisition_s = measured_reacquisition_s(time_s, run.error_pct,
                                                           settings.converged_below_pct)
        runs.append(run)
    return runs


def calibration_metrics(error_pct: np.ndarray, std_pct: np.ndarray) -> dict[str, Any]:
    """Fractions of samples whose true SOC lies within 1 and 2 standard deviations of the
    estimate (a calibrated Gaussian: 68.3 % and 95.4 %), and the mean standard deviation."""
    if len(error_pct) == 0:
        return {"within_1_sigma": None, "within_2_sigma": None, "mean_std_pct": None,
                "samples": 0}
    ratio = np.abs(error_pct) / np.maximum(std_pct, 1e-12)
    return {"within_1_sigma": float(np.mean(ratio <= 1.0)),
            "within_2_sigma": float(np.mean(ratio <= 2.0)),
            "mean_std_pct": float(np.mean(std_pct)), "samples": int(len(error_pct))}


def calibration(runs: list[CycleRun]) -> dict[str, Any] | None:
    """:func:`calibration_metrics` pooled and per ambient temperature; None without std."""
    if not runs or any(run.soc_std is None for run in runs):
        return None
    errors = [run.error_pct[run.counted] for run in runs]
    stds = [100.0 * run.soc_std[run.counted] for run in runs]
    result = calibration_metrics(np.concatenate(errors), np.concatenate(stds))
    result["by_temperature"] = [
        {"temperature_c": t, **calibration_metrics(
            np.concatenate([e for run, e in zip(runs, errors) if run.temperature_c == t]),
            np.concatenate([s for run, s in zip(runs, stds) if run.temperature_c == t]))}
        for t in sorted({run.temperature_c for run in runs})
    ]
    return result


def error_metrics(error_pct: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE and max |error| (percentage points) of the given errors."""
    if len(error_pct) == 0:
        return {"rmse_pct": None, "mae_pct": None, "max_abs_err_pct": None, "samples": 0}
    return {
        "rmse_pct": float(np.sqrt(np.mean(error_pct**2))),
        "mae_pct": float(np.mean(np.abs(error_pct))),
        "max_abs_err_pct": float(np.max(np.abs(error_pct))),
        "samples": int(len(error_pct)),
    }


def slowest_and_median(times: list[float | None]) -> tuple[float | None, float | None]:
    """The slowest cycle's time (None when a cycle never got there: a maximum over the
    others would hide it) and the median over the cycles that did."""
    reached = [t for t in times if t is not None]
    slowest = max(reached) if reached and len(reached) == len(times) else None
    return slowest, (float(np.median(reached)) if reached else None)


def summarise(runs: list[CycleRun], *, convergence: bool = False) -> dict[str, Any]:
    """Pooled metrics plus ``by_condition`` (per cycle) and ``by_temperature``.

    ``convergence`` adds the measured convergence times: ``convergence_s`` is the slowest
    cycle's (None when a cycle never converges), plus the median and the cycles that did not;
    and the re-acquisition times the same way (``reacquisition_s``, its median).
    """
    counted = [run.error_pct[run.counted] for run in runs]
    summary = error_metrics(np.concatenate(counted) if counted else np.empty(0))
    summary["by_condition"] = [
        {"cycle": run.cycle, "temperature_c": run.temperature_c, **error_metrics(errors)}
        for run, errors in zip(runs, counted)
    ]
    temperatures = sorted({run.temperature_c for run in runs})
    summary["by_temperature"] = [
        {"temperature_c": t, **error_metrics(np.concatenate(
            [e for run, e in zip(runs, counted) if run.temperature_c == t]))}
        for t in temperatures
    ]
    calibrated = calibration(runs)
    if calibrated is not None:
        summary["calibration"] = calibrated
    if convergence:
        for key in ("convergence_s", "reacquisition_s"):
            summary[key], summary[f"{key}_median"] = slowest_and_median(
                [getattr(run, key) for run in runs])
        summary["not_converged_cycles"] = [r.cycle for r in runs if r.convergence_s is None]
        for row, run in zip(summary["by_condition"], runs):
            row["convergence_s"] = run.convergence_s
            row["reacquisition_s"] = run.reacquisition_s
    return summary


def evaluate_runs(
    estimator: SocEstimator, cycles: list[Cycle], settings: ScenarioSettings | None = None,
    scenarios: Iterable[str] = SCENARIOS, on_cycle: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, list[CycleRun]]]:
    """:func:`evaluate` plus the per-cycle runs (for figures and traces)."""
    settings = settings or ScenarioSettings()
    if not cycles:
        raise ConfigError("no cycles to evaluate on", remedy="check the dataset split")
    runs = {name: run_scenario(estimator, cycles, name, settings, on_cycle) for name in scenarios}
    results = {name: summarise(scenario_runs, convergence=name == "cold_start")
               for name, scenario_runs in runs.items()}
    for name, result in results.items():
        if name == "cold_start":
            result["counted_after_s"] = settings.convergence_s
            result["start_fraction"] = settings.start_fraction
            result["converged_below_pct"] = settings.converged_below_pct
        if name == "degraded_sensors":
            result["description"] = settings.degraded_description()
    headline = results.get("from_start") or next(iter(results.values()))
    summary = {
        "cycles": len(cycles),
        **{k: headline[k] for k in ("rmse_pct", "mae_pct", "max_abs_err_pct", "samples")},
        "by_condition": headline["by_condition"],
        "by_temperature": headline["by_temperature"],
        "scenarios": results,
        "settings": settings.to_json(),
    }
    if "calibration" in headline:
        summary["calibration"] = headline["calibration"]
    return summary, runs


def evaluate(
    estimator: SocEstimator, cycles: list[Cycle], settings: ScenarioSettings | None = None,
    scenarios: Iterable[str] = SCENARIOS,
) -> dict[str, Any]:
    """All scenarios on ``cycles``; a plain, JSON-able dict (see module docstring)."""
    return evaluate_runs(estimator, cycles, settings, scenarios)[0]


def plot_runs(
    runs: dict[str, list[CycleRun]], path: Path, *, title: str = "", limit: int = 12
) -> Path:
    """Estimated vs true SOC per cycle (from start, cold start, degraded) into a PNG, with
    the from-start estimate's ±2 sigma band for a model that has one."""
    from matplotlib.figure import Figure

    base = runs.get("from_start") or next(iter(runs.values()))
    shown = base[:limit]
    columns = min(3, len(shown))
    rows = int(np.ceil(len(shown) / columns))
    fig = Figure(figsize=(5.0 * columns, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    styles = {"from_start": "C0", "cold_start": "C1", "degraded_sensors": "C2"}
    for ax, reference in zip(axes, shown):
        ax.plot(reference.time_s / 3600, 100 * reference.soc_true, "k", lw=1.5, label="true")
        for scenario, scenario_runs in runs.items():
            run = next(r for r in scenario_runs if r.cycle == reference.cycle)
            offset = len(reference.time_s) - len(run.time_s)
            hours = (run.time_s + reference.time_s[offset]) / 3600
            rmse = error_metrics(run.error_pct[run.counted])["rmse_pct"]
            ax.plot(hours, 100 * run.soc_est, color=styles.get(scenario), lw=0.9,
                    label=f"{scenario} ({rmse:.2f} %)" if rmse is not None else scenario)
            if run.soc_std is not None and scenario == "from_start":  # its ±2 sigma band
                ax.fill_between(hours, 100 * (run.soc_est - 2 * run.soc_std),
                                100 * (run.soc_est + 2 * run.soc_std),
                                color=styles.get(scenario), alpha=0.2, lw=0)
        ax.set_title(f"{reference.cycle} ({reference.temperature_c:g} °C)", fontsize=9)
        ax.set_xlabel("time [h]")
        ax.set_ylabel("SOC [%]")
        ax.legend(fontsize=7)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
