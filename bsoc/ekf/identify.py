"""Identification of the ECM from training cycles (never typed in, never from val/test data).

``EcmIdentifier().fit(train_cycles)`` learns :class:`~bsoc.ekf.ecm.EcmTables` in three steps:

1. **OCV.** From the low-rate cycles (``meta.profile == "ocv"``): voltage binned by SOC per
   branch; with a charge and a discharge branch the OCV is their mean (IR drop and hysteresis
   cancel), where only one branch covers a SOC range it is shifted by the half-gap nearest to
   it. A single-branch curve is corrected for its IR drop once the resistances are known
   (``OCV = V - (R0 + R1 + R2) I``, then the group is refitted). Without any low-rate cycle a
   pseudo-OCV (voltage minus an initial ``R0 I``, binned by SOC) is the starting point.
2. **Dynamics, per ambient temperature.** The pulse/drive cycles of one ambient form a group;
   ``scipy.optimize.least_squares`` fits R0, R1, R2 on a coarse SOC grid (log-parameters,
   linear in SOC), tau1 < tau2, and the group's OCV as
   ``OCV_g(s) = OCV_ref(1 - k (1 - s)) + D(s)`` with ``OCV_ref`` the group's own low-rate OCV,
   else the one nearest 25 degC: ``k`` absorbs a capacity convention or ageing difference
   between the low-rate test and the drive data (fixed at 1 against a pseudo-OCV); ``D``
   (piecewise linear, smooth, pulled towards 0) is the entropic/temperature correction and
   absorbs the mean hysteresis offset of discharge-dominated drive data. Residual: model minus
   measured voltage with the *reference* SOC of the data, plus weak smoothness rows so SOC
   ranges without data stay well-posed.
3. **Tables.** Each group becomes one table row at the group's current-weighted mean *cell*
   temperature (what the filter measures); capacity per row is the cycles' declared capacity
   (``capacity_ah``, else nominal), so a temperature dependence in the data carries over.

``report_`` holds the voltage RMSE per temperature of the final tables on the training cycles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.ekf.ecm import EcmTables
from bsoc.errors import ConfigError

OCV_PROFILE = "ocv"
REFERENCE_TEMPERATURE_C = 25.0


def _ambient_key(cycle: Cycle) -> float:
    return float(np.round(cycle.meta.ambient_c))


def _cycle_capacity(cycle: Cycle) -> float:
    capacity = cycle.meta.capacity_ah or cycle.meta.nominal_capacity_ah
    if not capacity or capacity <= 0:
        raise ConfigError(
            f"cycle '{cycle.meta.name}' has capacity {capacity} Ah",
            remedy="set a positive capacity_ah or nominal_capacity_ah in the dataset manifest",
        )
    return float(capacity)


@dataclass
class _Series:
    """One cycle resampled to a uniform step (so the fit filters with constant coefficients)."""

    dt: float
    current: np.ndarray
    soc: np.ndarray
    voltage: np.ndarray


def _uniform(cycle: Cycle) -> _Series:
    frame = cycle.frame
    t = frame["time_s"].to_numpy()
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    grid = t[0] + dt * np.arange(int(np.floor((t[-1] - t[0]) / dt)) + 1)
    column = {c: np.interp(grid, t, frame[c].to_numpy()) for c in ("current_a", "soc", "voltage_v")}
    return _Series(
        dt=dt, current=column["current_a"], soc=column["soc"], voltage=column["voltage_v"]
    )


def _binned(soc: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``value`` per SOC bin of a uniform n-point grid; NaN where a bin is empty."""
    index = np.clip(np.rint(soc * (n - 1)).astype(int), 0, n - 1)
    counts = np.bincount(index, minlength=n)
    sums = np.bincount(index, weights=value, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _filled(values: np.ndarray) -> np.ndarray:
    """Fill NaN entries by linear interpolation (constant beyond the ends)."""
    ok = np.isfinite(values)
    positions = np.arange(len(values))
    return np.interp(positions, positions[ok], values[ok])


def _monotone(ocv: np.ndarray) -> np.ndarray:
    """Make an OCV curve strictly increasing (by at most 10 uV) so its inverse is unique."""
    return np.maximum.accumulate(ocv) + 1e-5 * np.linspace(0.0, 1.0, len(ocv))


def ocv_from_low_rate(cycles: Sequence[Cycle], n_points: int) -> tuple[np.ndarray, float | None]:
    """OCV on a uniform SOC grid from low-rate cycles, and the branch current if single-branch.

    Returns ``(ocv, None)`` when charge and discharge branches were averaged, else
    ``(ocv, mean current)`` so that the caller can remove the IR drop later.
    """
    branches: dict[int, list[tuple[np.ndarray, float]]] = {-1: [], 1: []}
    for cycle in cycles:
        frame = cycle.frame
        current = frame["current_a"].to_numpy()
        moving = np.abs(current) > 1e-6
        if not moving.any():
            continue
        on_load = np.abs(current) > 0.25 * np.median(np.abs(current[moving]))
        for sign in (-1, 1):
            mask = on_load & (sign * current > 0)
            if mask.sum() >= 10:
                curve = _binned(
                    frame["soc"].to_numpy()[mask], frame["voltage_v"].to_numpy()[mask], n_points
                )
                branches[sign].append((curve, float(current[mask].mean())))
    means = {
        sign: (np.nanmean([c for c, _ in found], axis=0), float(np.mean([i for _, i in found])))
        for sign, found in branches.items()
        if found
    }
    if not means:
        raise ConfigError(
            "the low-rate ('ocv') cycles carry no usable current",
            remedy="check their current column, or drop them to fit the OCV from drive data",
        )
    if len(means) == 1:
        ((curve, current),) = means.values()
        return _monotone(_filled(curve)), current
    discharge, charge = means[-1][0], means[1][0]
    half_gap = _filled((charge - discharge) / 2.0)
    ocv = np.where(np.isfinite(discharge), discharge + half_gap, charge - half_gap)
    return _monotone(_filled(ocv)), None


def _r0_guess(series: Sequence[_Series], capacity_ah: float) -> float:
    """R0 from the voltage jumps at current steps (a robust starting point for the fit)."""
    ratios = []
    for s in series:
        d_i, d_v = np.diff(s.current), np.diff(s.voltage)
        steps = np.abs(d_i) > 0.2 * capacity_ah
        ratios.append(d_v[steps] / d_i[steps])
    joined = np.concatenate(ratios) if ratios else np.array([])
    return float(np.clip(np.median(joined), 1e-4, 1.0)) if len(joined) >= 5 else 0.05 / capacity_ah


@dataclass
class _GroupFit:
    log_r: np.ndarray  # (3, N_P): log R0, R1, R2 at the SOC nodes
    tau1: float
    tau2: float
    scale_k: float
    correction: np.ndarray  # (N_D,) OCV correction D at its SOC nodes
    rmse_v: float


class _GroupModel:
    """The voltage model of one ambient group as a function of its parameter vector."""

    def __init__(
        self,
        series: Sequence[_Series],
        ocv_ref: np.ndarray,
        *,
        n_nodes: int,
        n_correction: int,
        free_scale: bool,
        smoothness: tuple[float, float, float],
    ) -> None:
        self.series, self.ocv_ref = series, ocv_ref
        self.free_scale = free_scale
        self.ref_grid = np.linspace(0.0, 1.0, len(ocv_ref))
        self.nodes = np.linspace(0.0, 1.0, n_nodes)
        self.correction_nodes = np.linspace(0.0, 1.0, n_correction)
        self.smooth_r, self.smooth_ocv, self.level_ocv = smoothness
        self.n_samples = sum(len(s.voltage) for s in series)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, float, float, float, np.ndarray]:
        n = len(self.nodes)
        log_r = theta[: 3 * n].reshape(3, n)
        tau1 = float(np.exp(theta[3 * n]))
        tau2 = tau1 * float(np.exp(theta[3 * n + 1]))
        k = float(theta[3 * n + 2]) if self.free_scale else 1.0
        correction = theta[3 * n + 2 + int(self.free_scale) :]
        return log_r, tau1, tau2, k, correction

    def ocv(self, soc: np.ndarray, k: float, correction: np.ndarray) -> np.ndarray:
        mapped = np.clip(1.0 - k * (1.0 - soc), 0.0, 1.0)
        return np.interp(mapped, self.ref_grid, self.ocv_ref) + np.interp(
            soc, self.correction_nodes, correction
        )

    def voltage(self, theta: np.ndarray, s: _Series) -> np.ndarray:
        from scipy.signal import lfilter

        log_r, tau1, tau2, k, correction = self.unpack(theta)
        r = np.exp(np.stack([np.interp(s.soc, self.nodes, row) for row in log_r]))  # (3, T)
        ibar = 0.5 * (s.current + np.concatenate([s.current[:1], s.current[:-1]]))
        v = self.ocv(s.soc, k, correction) + r[0] * s.current
        for rc, tau in ((r[1], tau1), (r[2], tau2)):
            drive = np.concatenate([[0.0], rc[:-1] * ibar[1:]])  # R at the previous SOC
            a = np.exp(-s.dt / tau)
            v = v + lfilter([1.0 - a], [1.0, -a], drive)
        return v

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        scale = 1.0 / np.sqrt(self.n_samples)
        parts = [(self.voltage(theta, s) - s.voltage) * scale for s in self.series]
        log_r, _, _, _, correction = self.unpack(theta)
        parts.append(self.smooth_r * np.diff(log_r, n=2, axis=1).reshape(-1))
        parts.append(self.smooth_ocv * np.diff(correction, n=2))
        parts.append(self.level_ocv * correction)
        return np.concatenate(parts)

    def fit(self, r0_guess: float, min_tau_s: float, max_nfev: int) -> _GroupFit:
        from scipy.optimize import least_squares

        n = len(self.nodes)
        start = np.concatenate(
            [
                np.full(n, np.log(r0_guess)),
                np.full(2 * n, np.log(r0_guess / 2.0)),
                [np.log(max(10.0, 2 * min_tau_s)), np.log(20.0)],
                [1.0] if self.free_scale else [],
                np.zeros(len(self.correction_nodes)),
            ]
        )
        n_rest = len(start) - 3 * n - 2 - int(self.free_scale)
        low = np.concatenate(
            [
                np.full(3 * n, np.log(1e-5)),
                [np.log(min_tau_s), np.log(3.0)],
                [0.8] if self.free_scale else [],
                np.full(n_rest, -0.3),
            ]
        )
        high = np.concatenate(
            [
                np.full(3 * n, np.log(5.0)),
                [np.log(300.0), np.log(1000.0)],
                [1.25] if self.free_scale else [],
                np.full(n_rest, 0.3),
            ]
        )
        result = least_squares(
            self.residuals,
            np.clip(start, low + 1e-9, high - 1e-9),
            bounds=(low, high),
            x_scale="jac",
            max_nfev=max_nfev,
        )
        log_r, tau1, tau2, k, correction = self.unpack(result.x)
        error = np.concatenate([self.voltage(result.x, s) - s.voltage for s in self.series])
        return _GroupFit(
            log_r=log_r.copy(),
            tau1=tau1,
            tau2=tau2,
            scale_k=k,
            correction=np.asarray(correction, dtype=np.float64).copy(),
            rmse_v=float(np.sqrt(np.mean(error**2))),
        )


def voltage_rmse_by_temperature(tables: EcmTables, cycles: Sequence[Cycle]) -> list[dict[str, Any]]:
    """Voltage RMSE (mV) of the ECM with the data's reference SOC, per ambient temperature."""
    errors: dict[float, list[np.ndarray]] = defaultdict(list)
    for cycle in cycles:
        frame = cycle.frame
        model = tables.terminal_voltage(
            frame["time_s"].to_numpy(),
            frame["current_a"].to_numpy(),
            frame["temperature_c"].to_numpy(),
            frame["soc"].to_numpy(),
        )
        errors[_ambient_key(cycle)].append(model - frame["voltage_v"].to_numpy())
    return [
        {
            "ambient_c": ambient,
            "cycles": len(found),
            "voltage_rmse_mv": 1e3 * float(np.sqrt(np.mean(np.concatenate(found) ** 2))),
        }
        for ambient, found in sorted(errors.items())
    ]


class EcmIdentifier:
    """Estimator (scikit-learn style): ``fit(train_cycles)`` returns self with ``tables_``.

    Hyper-parameters: ``ocv_points`` (fine SOC grid of the OCV table), ``param_points``
    (coarse SOC grid of R0/R1/R2), ``correction_points`` (nodes of the OCV correction D),
    ``smoothness`` (weights, in volts, of the R-curvature, D-curvature and D-level rows),
    ``max_nfev`` (least-squares evaluations per group).

    Learned: ``tables_``, ``report_`` (per temperature: source of the OCV, k, RMSE),
    ``traces_`` (one cycle per temperature: time, measured and modelled voltage, for figures).
    """

    def __init__(
        self,
        *,
        ocv_points: int = 101,
        param_points: int = 6,
        correction_points: int = 11,
        smoothness: tuple[float, float, float] = (2e-3, 1.0, 0.05),
        max_nfev: int = 100,
    ) -> None:
        self.ocv_points = ocv_points
        self.param_points = param_points
        self.correction_points = correction_points
        self.smoothness = smoothness
        self.max_nfev = max_nfev

    def fit(
        self,
        cycles: Sequence[Cycle],
        on_group: Callable[[float], None] | None = None,
    ) -> EcmIdentifier:
        """Identify from training cycles; ``on_group(ambient)`` is called after each group."""
        low_rate = [c for c in cycles if c.meta.profile == OCV_PROFILE]
        groups: dict[float, list[Cycle]] = defaultdict(list)
        for cycle in cycles:
            if cycle.meta.profile != OCV_PROFILE:
                groups[_ambient_key(cycle)].append(cycle)
        if not groups:
            raise ConfigError(
                "the training split holds no pulse or drive cycles to identify R and tau from",
                remedy="put hppc or drive cycles into the training split",
            )
        own_ocv: dict[float, tuple[np.ndarray, float | None]] = {}
        by_ambient: dict[float, list[Cycle]] = defaultdict(list)
        for cycle in low_rate:
            by_ambient[_ambient_key(cycle)].append(cycle)
        for ambient, found in by_ambient.items():
            own_ocv[ambient] = ocv_from_low_rate(found, self.ocv_points)
        series = {a: [_uniform(c) for c in found] for a, found in groups.items()}
        capacity = {
            a: float(np.median([_cycle_capacity(c) for c in found])) for a, found in groups.items()
        }

        def nearest(keys: Sequence[float]) -> float:
            return min(keys, key=lambda a: (abs(a - REFERENCE_TEMPERATURE_C), -a))

        fits: dict[float, _GroupFit] = {}
        sources: dict[float, str] = {}
        if own_ocv:
            ref_ambient = nearest(list(own_ocv))
            ref_curve = own_ocv[ref_ambient][0]
        else:
            ref_ambient = nearest(list(groups))
            ref_curve = self._pseudo_ocv(series, capacity)
        order = sorted(groups, key=lambda a: (a != ref_ambient, abs(a - ref_ambient)))
        for ambient in order:
            own = own_ocv.get(ambient)
            curve = own[0] if own else ref_curve
            fit = self._fit_group(series[ambient], curve, bool(own_ocv), capacity[ambient])
            if own is not None and own[1] is not None:
                # Single-branch low-rate curve: remove its IR drop with the fitted R, refit.
                r_dc = np.exp(fit.log_r).sum(axis=0)
                soc = np.linspace(0.0, 1.0, self.ocv_points)
                nodes = np.linspace(0.0, 1.0, self.param_points)
                curve = _monotone(curve - np.interp(soc, nodes, r_dc) * own[1])
                own_ocv[ambient] = (curve, None)
                if ambient == ref_ambient:
                    ref_curve = curve
                fit = self._fit_group(series[ambient], curve, True, capacity[ambient])
            fits[ambient] = fit
            sources[ambient] = (
                (
                    "own low-rate cycle (IR-corrected)"
                    if own[1] is not None
                    else "own low-rate cycle"
                )
                if own
                else (
                    f"low-rate cycle at {ref_ambient:g} degC + fitted correction"
                    if own_ocv
                    else "pseudo-OCV from the drive data of all temperatures + fitted correction"
                )
            )
            if on_group is not None:
                on_group(ambient)
        self.tables_ = self._tables(groups, fits, own_ocv, ref_curve, capacity)
        final = {
            row["ambient_c"]: row for row in voltage_rmse_by_temperature(self.tables_, list(cycles))
        }
        self.report_ = {
            "ocv_cycles": [c.meta.name for c in low_rate],
            "by_temperature": [
                {
                    "ambient_c": ambient,
                    "table_temperature_c": float(t),
                    "cycles": [c.meta.name for c in groups[ambient]],
                    "ocv_source": sources[ambient],
                    "ocv_capacity_scale_k": fits[ambient].scale_k,
                    "group_fit_rmse_mv": 1e3 * fits[ambient].rmse_v,
                    "voltage_rmse_mv": final[ambient]["voltage_rmse_mv"],
                }
                for ambient, t in zip(sorted(groups), self.tables_.temperature_c, strict=True)
            ],
        }
        self.traces_ = [self._trace(groups[a][0]) for a in sorted(groups)]
        return self

    def _pseudo_ocv(
        self, series: dict[float, list[_Series]], capacity: dict[float, float]
    ) -> np.ndarray:
        """Voltage minus ``R0 I`` (R0 guessed per group), binned by SOC over all groups."""
        soc, v = [], []
        for ambient, found in series.items():
            r0 = _r0_guess(found, capacity[ambient])
            soc += [s.soc for s in found]
            v += [s.voltage - r0 * s.current for s in found]
        return _monotone(_filled(_binned(np.concatenate(soc), np.concatenate(v), self.ocv_points)))

    def _fit_group(
        self,
        series: Sequence[_Series],
        curve: np.ndarray,
        free_scale: bool,
        capacity_ah: float,
    ) -> _GroupFit:
        """Fit one group; the scale k is free only against a low-rate (not pseudo) OCV."""
        model = _GroupModel(
            series,
            curve,
            n_nodes=self.param_points,
            n_correction=self.correction_points,
            free_scale=free_scale,
            smoothness=self.smoothness,
        )
        min_tau = max(1.0, max(s.dt for s in series))
        return model.fit(_r0_guess(series, capacity_ah), min_tau, self.max_nfev)

    def _tables(
        self,
        groups: dict[float, list[Cycle]],
        fits: dict[float, _GroupFit],
        own_ocv: dict[float, tuple[np.ndarray, float | None]],
        ref_curve: np.ndarray,
        capacity: dict[float, float],
    ) -> EcmTables:
        ambients = sorted(groups)
        load_temperature = []
        for ambient in ambients:
            frames = [c.frame for c in groups[ambient]]
            weight = np.concatenate([np.abs(f["current_a"].to_numpy()) for f in frames])
            temp = np.concatenate([f["temperature_c"].to_numpy() for f in frames])
            load_temperature.append(
                float(np.average(temp, weights=weight)) if weight.sum() > 0 else float(temp.mean())
            )
        grid = np.array(load_temperature)
        if len(grid) > 1 and not (np.diff(grid) > 0).all():
            grid = np.array(ambients)  # cell temperatures overlap: fall back to the ambients
        soc = np.linspace(0.0, 1.0, self.ocv_points)
        ocv_rows = []
        for ambient in ambients:
            fit = fits[ambient]
            own = own_ocv.get(ambient)
            base = own[0] if own else ref_curve
            mapped = np.clip(1.0 - fit.scale_k * (1.0 - soc), 0.0, 1.0)
            row = np.interp(mapped, soc, base) + np.interp(
                soc, np.linspace(0.0, 1.0, self.correction_points), fit.correction
            )
            ocv_rows.append(_monotone(row))
        r = np.exp(np.stack([fits[a].log_r for a in ambients]))  # (N_T, 3, N_P)
        return EcmTables(
            temperature_c=grid,
            soc_grid=soc,
            ocv_v=np.stack(ocv_rows),
            param_soc_grid=np.linspace(0.0, 1.0, self.param_points),
            r0_ohm=r[:, 0],
            r1_ohm=r[:, 1],
            r2_ohm=r[:, 2],
            tau1_s=[fits[a].tau1 for a in ambients],
            tau2_s=[fits[a].tau2 for a in ambients],
            capacity_ah=[capacity[a] for a in ambients],
        )

    def _trace(self, cycle: Cycle) -> dict[str, Any]:
        frame = cycle.frame
        time_s = frame["time_s"].to_numpy()
        model = self.tables_.terminal_voltage(
            time_s,
            frame["current_a"].to_numpy(),
            frame["temperature_c"].to_numpy(),
            frame["soc"].to_numpy(),
        )
        return {
            "cycle": cycle.meta.name,
            "ambient_c": cycle.meta.ambient_c,
            "time_s": time_s,
            "measured_v": frame["voltage_v"].to_numpy(),
            "model_v": model,
        }
