"""Identification of the ECM from training cycles (never typed in, never from val/test data).

``EcmIdentifier().fit(train_cycles)`` learns :class:`~bsoc.ekf.ecm.EcmTables` in three steps:

1. **OCV.** From the low-rate cycles (``meta.profile == "ocv"``) of every temperature that
   has one: voltage binned by SOC per branch (its constant-current part); with a charge and a
   discharge branch the OCV is their mean (IR drop and hysteresis cancel), where only one
   branch covers a SOC range it is shifted by the half-gap nearest to it, and SOC that a
   temperature's test does not reach follows the reference temperature's curve. A single-branch curve is corrected for its IR drop once the resistances are known
   (``OCV = V - (R0 + R1 + R2) I``, then the group is refitted). Without any low-rate cycle a
   pseudo-OCV (voltage minus an initial ``R0 I``, binned by SOC) is the starting point.
2. **Dynamics, per ambient temperature (start).** The pulse/drive cycles of one ambient form
   a group; ``scipy.optimize.least_squares`` fits R0, R1, R2 on a coarse SOC grid
   (log-parameters, linear in SOC), tau1 and tau2 in disjoint bounded ranges, and the group's
   OCV. The *reference* group (own low-rate OCV nearest 25 degC) goes first with
   ``OCV(s) = OCV_lr(1 - k (1 - s)) + D(s)``: ``k`` absorbs the capacity convention between
   the low-rate test and the drive data (2.997 Ah against 2.9 Ah on the Panasonic data; fixed
   at 1 against a pseudo-OCV); ``D`` (piecewise linear, smooth, weakly pulled towards 0)
   absorbs the mean hysteresis offset of discharge-dominated drive data. That OCV (or a
   group's own low-rate curve under the same ``k``) is the base of every other group, which
   only adds its own small ``D`` (entropic change). Why ``k`` is shared: it is a property of
   the two tests, not of the temperature; fitted per group it took values from 0.84 to 1.13
   on the Panasonic cold drives, i.e. the OCV absorbed the dynamics and shifted the SOC the
   filter reads off the voltage. Residual: model minus measured voltage with the *reference*
   SOC of the data, plus weak smoothness rows so SOC ranges without data stay well-posed.
3. **Joint fit over all temperatures.** A cell warms by 15 degC or more during a cold drive,
   so constant parameters per group are the wrong model. Starting from the group fits, all
   groups are refitted at once with every parameter interpolated to *each sample's measured
   cell temperature* between nodes at the ambient temperatures -- log R and log tau linear in
   1/T (Arrhenius), exactly as :meth:`EcmTables.lookup` does for the filter -- plus weak
   curvature rows across the nodes. The RC voltages then have time-varying coefficients
   (:func:`~bsoc.ekf.ecm.linear_recursion`); the Jacobian uses grouped finite differences on
   the sparsity pattern of the parameters (:meth:`_EcmModel.sparsity`).
4. **Tables.** The joint fit's nodes become the table rows; capacity per row is the cycles'
   declared capacity (``capacity_ah``, else nominal), so a temperature dependence in the data
   carries over.

``report_`` holds the voltage RMSE per temperature of the final tables on the training
pulse/drive cycles (the low-rate cycles' own SOC basis differs by ``k``; they are not counted).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.ekf.ecm import EcmTables, linear_recursion, temperature_weights
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
    temperature: np.ndarray


def _uniform(cycle: Cycle) -> _Series:
    frame = cycle.frame
    t = frame["time_s"].to_numpy()
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    grid = t[0] + dt * np.arange(int(np.floor((t[-1] - t[0]) / dt)) + 1)
    column = {
        c: np.interp(grid, t, frame[c].to_numpy())
        for c in ("current_a", "soc", "voltage_v", "temperature_c")
    }
    return _Series(
        dt=dt,
        current=column["current_a"],
        soc=column["soc"],
        voltage=column["voltage_v"],
        temperature=column["temperature_c"],
    )


def _binned(soc: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``value`` per SOC bin of a uniform n-point grid; NaN where a bin is empty."""
    index = np.clip(np.rint(soc * (n - 1)).astype(int), 0, n - 1)
    counts = np.bincount(index, minlength=n)
    sums = np.bincount(index, weights=value, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _filled(values: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Fill NaN entries by linear interpolation; beyond the ends constant, or following
    ``base`` shifted to meet the last value (the shape of another temperature's curve)."""
    ok = np.isfinite(values)
    positions = np.arange(len(values))
    filled = np.interp(positions, positions[ok], values[ok])
    if base is None:
        return filled
    first, last = positions[ok][[0, -1]]
    below, above = positions < first, positions > last
    filled[below] = base[below] + (values[first] - base[first])
    filled[above] = base[above] + (values[last] - base[last])
    return filled


def _monotone(ocv: np.ndarray) -> np.ndarray:
    """Make an OCV curve strictly increasing (by at most 10 uV) so its inverse is unique."""
    return np.maximum.accumulate(ocv) + 1e-5 * np.linspace(0.0, 1.0, len(ocv))


def ocv_from_low_rate(
    cycles: Sequence[Cycle], n_points: int, base: np.ndarray | None = None
) -> tuple[np.ndarray, float | None]:
    """OCV on a uniform SOC grid from low-rate cycles, and the branch current if single-branch.

    Returns ``(ocv, None)`` when charge and discharge branches were averaged, else
    ``(ocv, mean current)`` so that the caller can remove the IR drop later. A branch is its
    constant-current part (at least 80 % of the branch's median current): the taper of a CV
    charge holds the voltage at the limit while SOC still rises. SOC the cycles do not reach
    (a cold C/20 test on the 25 degC capacity stops short of 0) follows ``base`` (another
    temperature's curve) where given, else the nearest value.
    """
    branches: dict[int, list[tuple[np.ndarray, float]]] = {-1: [], 1: []}
    for cycle in cycles:
        frame = cycle.frame
        current = frame["current_a"].to_numpy()
        for sign in (-1, 1):
            branch = sign * current > 1e-6
            if not branch.any():
                continue
            mask = branch & (sign * current >= 0.8 * np.median(sign * current[branch]))
            if mask.sum() >= 10:
                curve = _binned(
                    frame["soc"].to_numpy()[mask], frame["voltage_v"].to_numpy()[mask], n_points
                )
                branches[sign].append((curve, float(current[mask].mean())))
    with warnings.catch_warnings():  # SOC bins no cycle reaches stay NaN (filled below)
        warnings.simplefilter("ignore", RuntimeWarning)
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
        return _monotone(_filled(curve, base)), current
    discharge, charge = means[-1][0], means[1][0]
    half_gap = _filled((charge - discharge) / 2.0)
    ocv = np.where(np.isfinite(discharge), discharge + half_gap, charge - half_gap)
    return _monotone(_filled(ocv, base)), None


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
class _Fit:
    """Identified parameters at the temperature nodes of an :class:`_EcmModel`."""

    theta: np.ndarray  # the least-squares vector (node-major)
    log_r: np.ndarray  # (N_T, 3, N_P): log R0, R1, R2 at the SOC nodes
    tau: np.ndarray  # (N_T, 2): tau1, tau2
    scale_k: np.ndarray  # (N_T,)
    correction: np.ndarray  # (N_T, N_D) OCV correction D at its SOC nodes
    rmse_v: float


@dataclass
class _Prepared:
    """Per-sample interpolation indices of one series, fixed during the fit."""

    series: _Series
    dt: np.ndarray  # 0 at the first sample (RC voltages start relaxed), else the step
    ibar: np.ndarray  # mean current over (t_{k-1}, t_k]
    j: np.ndarray  # lower temperature node
    j1: np.ndarray  # upper temperature node
    w: np.ndarray  # weight of the upper node (linear in 1/T, as EcmTables)
    i: np.ndarray  # lower SOC node of the R grid
    f: np.ndarray
    ic: np.ndarray  # lower SOC node of the correction grid
    fc: np.ndarray


def _grid_position(soc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.clip(soc, 0.0, 1.0) * (n - 1)
    i = np.minimum(pos.astype(np.int64), n - 2)
    return i, pos - i


class _EcmModel:
    """The ECM voltage of a set of series as a function of one parameter vector.

    Parameters live at temperature nodes ``nodes_c`` and are interpolated to every sample's
    *measured cell temperature* exactly as :meth:`EcmTables.lookup` does (linear in 1/T; log
    space for R and tau), so identification and filter use the same model. With one node this
    is a constant-parameter fit of one ambient group. Per node the vector holds log R0/R1/R2 at
    the SOC nodes, log tau1, log tau2 (in disjoint ranges, so tau1 < tau2), the OCV capacity
    scale k (when free) and the OCV correction D; OCV at a node is
    ``OCV_ref(1 - k (1 - s)) + D(s)``.
    """

    def __init__(
        self,
        series: Sequence[_Series],
        nodes_c: Sequence[float],
        ocv_ref: np.ndarray,
        *,
        n_nodes: int,
        n_correction: int,
        free_scale: bool,
        smoothness: tuple[float, float, float],
        smooth_t: float,
    ) -> None:
        self.nodes_c = np.asarray(nodes_c, dtype=np.float64)
        self.ocv_ref = np.atleast_2d(ocv_ref)  # (N_T, N_ocv)
        self.n_nodes, self.n_correction = n_nodes, n_correction
        self.free_scale = free_scale
        self.smooth_r, self.smooth_ocv, self.level_ocv = smoothness
        self.smooth_t = smooth_t
        self.per_node = 3 * n_nodes + 2 + int(free_scale) + n_correction
        self.prepared = [self._prepare(s) for s in series]
        self.n_samples = sum(len(s.voltage) for s in series)

    def _prepare(self, s: _Series) -> _Prepared:
        n_t = len(self.nodes_c)
        if n_t == 1:
            j = np.zeros(len(s.soc), dtype=np.int64)
            j1, w = j, np.zeros(len(s.soc))
        else:
            j, w = temperature_weights(self.nodes_c, s.temperature)
            j1 = j + 1
        dt = np.full(len(s.soc), s.dt)
        dt[0] = 0.0
        i, f = _grid_position(s.soc, self.n_nodes)
        ic, fc = _grid_position(s.soc, self.n_correction)
        ibar = 0.5 * (s.current + np.concatenate([s.current[:1], s.current[:-1]]))
        return _Prepared(s, dt, ibar, j, j1, w, i, f, ic, fc)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(log R (N_T, 3, N_P), log tau (N_T, 2), k (N_T,), D (N_T, N_D))."""
        node = theta.reshape(len(self.nodes_c), self.per_node)
        n = 3 * self.n_nodes
        log_r = node[:, :n].reshape(-1, 3, self.n_nodes)
        log_tau = node[:, n : n + 2]
        k = node[:, n + 2] if self.free_scale else np.ones(len(node))
        return log_r, log_tau, k, node[:, n + 2 + int(self.free_scale) :]

    def _ocv_at_node(
        self, p: _Prepared, jj: np.ndarray, k: np.ndarray, correction: np.ndarray
    ) -> np.ndarray:
        mapped = np.clip(1.0 - k[jj] * (1.0 - p.series.soc), 0.0, 1.0)
        i, f = _grid_position(mapped, self.ocv_ref.shape[1])
        row = np.minimum(jj, len(self.ocv_ref) - 1)  # (a single shared curve is allowed)
        base = self.ocv_ref[row, i] * (1 - f) + self.ocv_ref[row, i + 1] * f
        return base + correction[jj, p.ic] * (1 - p.fc) + correction[jj, p.ic + 1] * p.fc

    def voltage(self, theta: np.ndarray, p: _Prepared) -> np.ndarray:
        log_r, log_tau, k, correction = self.unpack(theta)
        w = p.w[:, None]
        at_soc = [log_r[jj, :, p.i] * (1 - p.f)[:, None] + log_r[jj, :, p.i + 1] * p.f[:, None]
                  for jj in (p.j, p.j1)]  # (T, 3) each
        r = np.exp(at_soc[0] * (1 - w) + at_soc[1] * w)
        tau = np.exp(log_tau[p.j] * (1 - w) + log_tau[p.j1] * w)  # (T, 2)
        ocv = self._ocv_at_node(p, p.j, k, correction) * (1 - p.w) + self._ocv_at_node(
            p, p.j1, k, correction
        ) * p.w
        v = ocv + r[:, 0] * p.series.current
        for n in (1, 2):  # RC pairs driven with R and tau at the previous sample
            r_prev = np.concatenate([r[:1, n], r[:-1, n]])
            a = np.exp(-p.dt / np.concatenate([tau[:1, n - 1], tau[:-1, n - 1]]))
            v = v + linear_recursion(a, r_prev * (1 - a) * p.ibar)
        return v

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Voltage errors of every sample (scaled to an RMSE), then the regularisation rows."""
        scale = 1.0 / np.sqrt(self.n_samples)
        parts = [(self.voltage(theta, p) - p.series.voltage) * scale for p in self.prepared]
        return np.concatenate([*parts, self.regularisation(theta)])

    def regularisation(self, theta: np.ndarray) -> np.ndarray:
        """Smoothness in SOC (and in temperature over >= 3 nodes) and a weak pull of D to 0."""
        log_r, log_tau, _, correction = self.unpack(theta)
        parts = []
        parts.append(self.smooth_r * np.diff(log_r, n=2, axis=2).reshape(-1))
        parts.append(self.smooth_ocv * np.diff(correction, n=2, axis=1).reshape(-1))
        parts.append(self.level_ocv * correction.reshape(-1))
        if len(self.nodes_c) >= 3:  # smooth in temperature too (nodes with little data)
            for values in (log_r, log_tau, correction):
                parts.append(self.smooth_t * np.diff(values, n=2, axis=0).reshape(-1))
        return np.concatenate(parts)

    def sparsity(self) -> Any:
        """Which residual rows each parameter can move (for grouped finite differences).

        A parameter at temperature node j and SOC node m only acts on samples that use both
        nodes; R0 only under current, R1/R2 and tau from the first such sample on (RC memory),
        k and D at every sample that uses the node. With the cells' slow temperature drift this
        cuts the Jacobian's cost by the number of nodes or more. The regularisation rows are
        linear in theta, so their pattern is read off one finite-difference Jacobian.
        """
        from scipy.sparse import coo_matrix, csr_matrix

        n_p, n_d, per = self.n_nodes, self.n_correction, self.per_node
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []

        def add(mask: np.ndarray, offset: int, column: int) -> None:
            hit = np.flatnonzero(mask)
            rows.append(hit + offset)
            cols.append(np.full(len(hit), column))

        def from_first(mask: np.ndarray) -> np.ndarray:
            out = np.zeros(len(mask), dtype=bool)
            if mask.any():
                out[max(int(np.argmax(mask)) - 1, 0) :] = True
            return out

        offset = 0
        for p in self.prepared:
            loaded = p.ibar != 0.0
            for node in range(len(self.nodes_c)):
                base = node * per
                uses = ((p.j == node) & (p.w < 1.0)) | ((p.j1 == node) & (p.w > 0.0))
                tau_rows = from_first(uses & loaded)
                for col in (3 * n_p, 3 * n_p + 1):
                    add(tau_rows, offset, base + col)
                if self.free_scale:
                    add(uses, offset, base + 3 * n_p + 2)
                for m in range(n_p):
                    near = uses & ((p.i == m) | (p.i + 1 == m))
                    add(near & loaded, offset, base + m)
                    for q in (1, 2):
                        add(from_first(near & loaded), offset, base + q * n_p + m)
                for c in range(n_d):
                    add(uses & ((p.ic == c) | (p.ic + 1 == c)), offset, base + per - n_d + c)
            offset += len(p.series.voltage)
        theta = np.zeros(per * len(self.nodes_c))
        regular = self.regularisation(theta)
        pattern = np.zeros((len(regular), len(theta)), dtype=bool)
        for c in range(len(theta)):
            step = theta.copy()
            step[c] = 1.0
            pattern[:, c] = self.regularisation(step) != regular
        reg_rows, reg_cols = np.nonzero(pattern)
        rows.append(reg_rows + offset)
        cols.append(reg_cols)
        r, c = np.concatenate(rows), np.concatenate(cols)
        shape = (offset + len(regular), len(theta))
        return csr_matrix(coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=shape))

    def start_and_bounds(
        self, r0_guess: float, tau_ranges_s: tuple[tuple[float, float], tuple[float, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A neutral start and the bounds of one node's block, tiled over the nodes."""
        n, n_rest = self.n_nodes, self.n_correction
        (tau1_low, tau1_high), (tau2_low, tau2_high) = tau_ranges_s
        free = [1.0] if self.free_scale else []
        start = np.concatenate(
            [
                np.full(n, np.log(r0_guess)),
                np.full(2 * n, np.log(r0_guess / 2.0)),
                np.log([np.sqrt(tau1_low * tau1_high), np.sqrt(tau2_low * tau2_high)]),
                free,
                np.zeros(n_rest),
            ]
        )
        low = np.concatenate(
            [
                np.full(3 * n, np.log(1e-5)),
                np.log([tau1_low, tau2_low]),
                [0.8] if self.free_scale else [],
                np.full(n_rest, -0.3),
            ]
        )
        high = np.concatenate(
            [
                np.full(3 * n, np.log(5.0)),
                np.log([tau1_high, tau2_high]),
                [1.25] if self.free_scale else [],
                np.full(n_rest, 0.3),
            ]
        )
        return tuple(np.tile(x, len(self.nodes_c)) for x in (start, low, high))  # type: ignore[return-value]

    def fit(
        self,
        start: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        max_nfev: int,
        *,
        sparse: bool = False,
    ) -> _Fit:
        """Bounded least squares; ``sparse`` uses :meth:`sparsity` (worth it over many nodes)."""
        from scipy.optimize import least_squares

        result = least_squares(
            self.residuals,
            np.clip(start, low + 1e-9, high - 1e-9),
            bounds=(low, high),
            x_scale="jac",
            max_nfev=max_nfev,
            jac_sparsity=self.sparsity() if sparse else None,
        )
        return self.evaluate(result.x)

    def evaluate(self, theta: np.ndarray) -> _Fit:
        """The parameters held in ``theta`` and their voltage RMSE on the series."""
        log_r, log_tau, k, correction = self.unpack(theta)
        error = np.concatenate([self.voltage(theta, p) - p.series.voltage for p in self.prepared])
        return _Fit(
            theta=theta.copy(),
            log_r=log_r.copy(),
            tau=np.exp(log_tau),
            scale_k=np.asarray(k, dtype=np.float64).copy(),
            correction=correction.copy(),
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
    ``tau_ranges_s`` (bounds of
    tau1 and of tau2; disjoint, so tau1 < tau2), ``smooth_t`` (weight of the curvature across
    temperature nodes in the joint fit), ``max_nfev`` (least-squares evaluations per group),
    ``joint_nfev`` (evaluations of the joint fit; 0 keeps the per-group parameters).

    Why tau2 is bounded: an RC pair with a time constant of hours and a large R integrates the
    current like the SOC does, so the filter cannot tell them apart; on the Panasonic data an
    unbounded fit put tau2 at 7600 s with R2 = 0.44 ohm, and the EKF then explained a
    discharge by V2 = -1 V while SOC stayed at 100 %.

    Learned: ``tables_``, ``report_`` (OCV source per temperature, k, RMSE per temperature),
    ``traces_`` (one cycle per temperature: time, measured and modelled voltage, for figures).
    """

    def __init__(
        self,
        *,
        ocv_points: int = 101,
        param_points: int = 6,
        correction_points: int = 11,
        smoothness: tuple[float, float, float] = (2e-3, 1.0, 0.05),
        tau_ranges_s: tuple[tuple[float, float], tuple[float, float]] = (
            (1.0, 60.0),
            (60.0, 400.0),
        ),
        smooth_t: float = 2e-3,
        max_nfev: int = 100,
        joint_nfev: int = 12,
    ) -> None:
        self.ocv_points = ocv_points
        self.param_points = param_points
        self.correction_points = correction_points
        self.smoothness = smoothness
        self.tau_ranges_s = tau_ranges_s
        self.smooth_t = smooth_t
        self.max_nfev = max_nfev
        self.joint_nfev = joint_nfev

    def fit(
        self,
        cycles: Sequence[Cycle],
        on_group: Callable[[float], None] | None = None,
    ) -> EcmIdentifier:
        """Identify from training cycles; ``on_group(ambient)`` is called after each group.

        The reference group (own low-rate OCV nearest 25 degC) first, with the OCV scale k
        free; its OCV then is the base of every temperature without its own low-rate test
        (others use their own curve under the same k), with a small correction D pulled to 0.
        Then per ambient group (constant parameters: a robust start), then one joint fit of
        all groups with every parameter a function of each sample's measured cell temperature
        (table nodes at the ambient temperatures), which is the model the filter runs.
        """
        low_rate = [c for c in cycles if c.meta.profile == OCV_PROFILE]
        dynamic = [c for c in cycles if c.meta.profile != OCV_PROFILE]
        groups: dict[float, list[Cycle]] = defaultdict(list)
        for cycle in dynamic:
            groups[_ambient_key(cycle)].append(cycle)
        if not groups:
            raise ConfigError(
                "the training split holds no pulse or drive cycles to identify R and tau from",
                remedy="put hppc or drive cycles into the training split",
            )
        by_ambient: dict[float, list[Cycle]] = defaultdict(list)
        for cycle in low_rate:
            by_ambient[_ambient_key(cycle)].append(cycle)
        series = {a: [_uniform(c) for c in found] for a, found in groups.items()}
        capacity = {
            a: float(np.median([_cycle_capacity(c) for c in found])) for a, found in groups.items()
        }

        def nearest(keys: Sequence[float]) -> float:
            return min(keys, key=lambda a: (abs(a - REFERENCE_TEMPERATURE_C), -a))

        ref_ambient = nearest([a for a in by_ambient if a in groups] or list(groups))
        own_ocv = self._own_ocv(by_ambient, ref_ambient)
        if ref_ambient in own_ocv:
            ref_own = own_ocv[ref_ambient]
        else:
            ref_own = (self._pseudo_ocv(series, capacity), None)
        ref_fit, ref_curve = self._fit_group(
            series[ref_ambient], ref_own, capacity[ref_ambient], free_scale=bool(own_ocv)
        )
        k = float(ref_fit.scale_k[0])
        base = {ref_ambient: self._ocv_row(ref_curve, k, ref_fit.correction[0])}
        fits = {ref_ambient: ref_fit}
        if on_group is not None:
            on_group(ref_ambient)
        for ambient in sorted(groups, key=lambda a: abs(a - ref_ambient))[1:]:
            own = own_ocv.get(ambient)
            start = (self._ocv_row(own[0], k), own[1]) if own else (base[ref_ambient], None)
            fits[ambient], base[ambient] = self._fit_group(
                series[ambient], start, capacity[ambient], free_scale=False
            )
            if on_group is not None:
                on_group(ambient)
        ambients = sorted(groups)
        curves = np.stack([base[a] for a in ambients])
        start = np.concatenate(  # the reference's D is already in its base curve
            [
                np.concatenate(
                    [
                        fits[a].log_r[0].reshape(-1),
                        np.log(fits[a].tau[0]),
                        fits[a].correction[0] * (a != ref_ambient),
                    ]
                )
                for a in ambients
            ]
        )
        joint = self._fit_joint(ambients, series, curves, start)
        self.tables_ = self._tables(ambients, joint, curves, capacity)
        rmse = voltage_rmse_by_temperature(self.tables_, dynamic)
        final = {row["ambient_c"]: row for row in rmse}
        self.report_ = {
            "ocv_cycles": [c.meta.name for c in low_rate],
            "ocv_reference_c": ref_ambient,
            "ocv_capacity_scale_k": k,
            "tau_ranges_s": [list(r) for r in self.tau_ranges_s],
            "temperature_model": "parameters at the ambient nodes, interpolated per sample at the "
            "measured cell temperature (log R, log tau linear in 1/T; held beyond the end nodes)",
            "joint_fit_rmse_mv": 1e3 * joint.rmse_v,
            "by_temperature": [
                {
                    "ambient_c": ambient,
                    "table_temperature_c": float(t),
                    "cycles": [c.meta.name for c in groups[ambient]],
                    "ocv_source": self._ocv_source(ambient, ref_ambient, own_ocv),
                    "ocv_correction_max_mv": 1e3 * float(np.abs(joint.correction[n]).max()),
                    "group_fit_rmse_mv": 1e3 * fits[ambient].rmse_v,
                    "voltage_rmse_mv": final[ambient]["voltage_rmse_mv"],
                }
                for n, (ambient, t) in enumerate(
                    zip(ambients, self.tables_.temperature_c, strict=True)
                )
            ],
        }
        self.traces_ = [self._trace(groups[a][0]) for a in ambients]
        return self

    def _own_ocv(
        self, by_ambient: dict[float, list[Cycle]], ref_ambient: float
    ) -> dict[float, tuple[np.ndarray, float | None]]:
        """Each temperature's OCV from its own low-rate cycles, the reference temperature's
        first: it gives the shape where another temperature's test does not reach."""
        own: dict[float, tuple[np.ndarray, float | None]] = {}
        if ref_ambient in by_ambient:
            own[ref_ambient] = ocv_from_low_rate(by_ambient[ref_ambient], self.ocv_points)
        base = own[ref_ambient][0] if own else None
        for ambient, found in by_ambient.items():
            if ambient != ref_ambient:
                own[ambient] = ocv_from_low_rate(found, self.ocv_points, base)
        return own

    @staticmethod
    def _ocv_source(
        ambient: float, ref_ambient: float, own_ocv: dict[float, tuple[np.ndarray, float | None]]
    ) -> str:
        if ambient in own_ocv:
            ir = " (IR-corrected)" if own_ocv[ambient][1] is not None else ""
            return f"own low-rate cycle{ir}"
        if ref_ambient in own_ocv:
            return f"low-rate cycle at {ref_ambient:g} degC + fitted correction"
        return "pseudo-OCV from the drive data of all temperatures + fitted correction"

    def _ocv_row(
        self, curve: np.ndarray, k: float, correction: np.ndarray | None = None
    ) -> np.ndarray:
        """``curve(1 - k (1 - s)) + D(s)`` on the OCV grid, strictly increasing."""
        soc = np.linspace(0.0, 1.0, self.ocv_points)
        row = np.interp(np.clip(1.0 - k * (1.0 - soc), 0.0, 1.0), soc, curve)
        if correction is not None:
            row = row + np.interp(soc, np.linspace(0.0, 1.0, self.correction_points), correction)
        return _monotone(row)

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

    def _model(
        self,
        series: Sequence[_Series],
        nodes_c: Sequence[float],
        curves: np.ndarray,
        *,
        free: bool,
    ) -> _EcmModel:
        return _EcmModel(
            series,
            nodes_c,
            curves,
            n_nodes=self.param_points,
            n_correction=self.correction_points,
            free_scale=free,
            smoothness=self.smoothness,
            smooth_t=self.smooth_t,
        )

    def _tau_ranges(self, series: Sequence[_Series]) -> tuple[tuple[float, float], ...]:
        (low1, high1), (low2, high2) = self.tau_ranges_s
        return (max(low1, 1.0, max(s.dt for s in series)), high1), (low2, high2)

    def _fit_group(
        self,
        series: Sequence[_Series],
        ocv: tuple[np.ndarray, float | None],
        capacity_ah: float,
        *,
        free_scale: bool,
    ) -> tuple[_Fit, np.ndarray]:
        """Fit one group against an OCV curve; return the fit and the curve it used.

        ``ocv = (curve, branch current)``: a single-branch low-rate curve (current not None)
        is corrected for its IR drop with the fitted R, then the group is refitted.
        """
        curve, branch_current = ocv
        model = self._model(series, [0.0], curve, free=free_scale)
        start, low, high = model.start_and_bounds(
            _r0_guess(series, capacity_ah), self._tau_ranges(series)
        )
        fit = model.fit(start, low, high, self.max_nfev)
        if branch_current is None:
            return fit, curve
        r_dc = np.exp(fit.log_r[0]).sum(axis=0)
        soc = np.linspace(0.0, 1.0, self.ocv_points)
        nodes = np.linspace(0.0, 1.0, self.param_points)
        curve = _monotone(curve - np.interp(soc, nodes, r_dc) * branch_current)
        model = self._model(series, [0.0], curve, free=free_scale)
        return model.fit(fit.theta, low, high, self.max_nfev), curve

    def _fit_joint(
        self,
        ambients: list[float],
        series: dict[float, list[_Series]],
        curves: np.ndarray,
        start: np.ndarray,
    ) -> _Fit:
        """All groups at once with per-sample temperature, started from the group fits.

        The curves are the final base OCV per node (k applied), so k is fixed at 1 and D is
        the per-temperature correction on top of it.
        """
        every = [s for a in ambients for s in series[a]]
        model = self._model(every, ambients, curves, free=False)
        _, low, high = model.start_and_bounds(1e-2, self._tau_ranges(every))
        if self.joint_nfev <= 0:
            return model.evaluate(start)
        return model.fit(start, low, high, self.joint_nfev, sparse=True)

    def _tables(
        self,
        ambients: list[float],
        fit: _Fit,
        curves: np.ndarray,
        capacity: dict[float, float],
    ) -> EcmTables:
        ocv_rows = [
            self._ocv_row(curve, 1.0, correction)
            for curve, correction in zip(curves, fit.correction, strict=True)
        ]
        r = np.exp(fit.log_r)  # (N_T, 3, N_P)
        return EcmTables(
            temperature_c=ambients,
            soc_grid=np.linspace(0.0, 1.0, self.ocv_points),
            ocv_v=np.stack(ocv_rows),
            param_soc_grid=np.linspace(0.0, 1.0, self.param_points),
            r0_ohm=r[:, 0],
            r1_ohm=r[:, 1],
            r2_ohm=r[:, 2],
            tau1_s=fit.tau[:, 0],
            tau2_s=fit.tau[:, 1],
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
