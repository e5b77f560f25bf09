"""The ECM's dynamics identified by least squares: R0, R1, R2, tau1, tau2 and the OCV terms.

:class:`EcmLeastSquares` is the ECM voltage (:func:`bsoc.ekf.ecm.ecm_voltage`) of a set of
uniformly resampled cycles as a function of one parameter vector, with the parameters
interpolated to every sample exactly as :meth:`EcmTables.lookup` does for the filter, so
identification and filter use the same model (evaluated in one compiled pass,
:mod:`bsoc.ekf.fit_kernel`). ``scipy.optimize.least_squares`` fits it:

* per ambient group, one temperature node: R0, R1, R2 on a coarse SOC grid (log-parameters,
  linear in SOC), tau1 and tau2 in disjoint bounded ranges, and the group's OCV terms
  (scale ``k`` and correction ``D``, :mod:`bsoc.ekf.ocv`);
* jointly, one node per ambient temperature: every parameter interpolated to *each
  sample's measured cell temperature* (log R and log tau linear in 1/T, Arrhenius), because
  a cell warms by 15 degC or more during a cold drive. The RC voltages then have
  time-varying coefficients; the Jacobian uses
  grouped finite differences on the sparsity pattern of the parameters
  (:meth:`EcmLeastSquares.sparsity`).

Residual: model minus measured voltage with the *reference* SOC of the data, plus weak
smoothness rows so SOC ranges (and temperature nodes) without data stay well-posed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.ekf.ecm import temperature_weights
from bsoc.ekf.fit_kernel import fit_voltage


@dataclass
class Series:
    """One cycle resampled to a uniform step (so the fit filters with constant coefficients)."""

    dt: float
    current: np.ndarray
    soc: np.ndarray
    voltage: np.ndarray
    temperature: np.ndarray


def uniform_series(cycle: Cycle) -> Series:
    """``cycle`` on its median time step (linear interpolation)."""
    frame = cycle.frame
    t = frame["time_s"].to_numpy()
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    grid = t[0] + dt * np.arange(int(np.floor((t[-1] - t[0]) / dt)) + 1)
    column = {
        c: np.interp(grid, t, frame[c].to_numpy())
        for c in ("current_a", "soc", "voltage_v", "temperature_c")
    }
    return Series(
        dt=dt,
        current=column["current_a"],
        soc=column["soc"],
        voltage=column["voltage_v"],
        temperature=column["temperature_c"],
    )


def r0_guess(series: Sequence[Series], capacity_ah: float) -> float:
    """R0 from the voltage jumps at current steps (a robust starting point for the fit)."""
    ratios = []
    for s in series:
        d_i, d_v = np.diff(s.current), np.diff(s.voltage)
        steps = np.abs(d_i) > 0.2 * capacity_ah
        ratios.append(d_v[steps] / d_i[steps])
    joined = np.concatenate(ratios) if ratios else np.array([])
    return float(np.clip(np.median(joined), 1e-4, 1.0)) if len(joined) >= 5 else 0.05 / capacity_ah


@dataclass
class EcmFit:
    """Identified parameters at the temperature nodes of an :class:`EcmLeastSquares`."""

    theta: np.ndarray  # the least-squares vector (node-major)
    log_r: np.ndarray  # (N_T, 3, N_P): log R0, R1, R2 at the SOC nodes
    tau: np.ndarray  # (N_T, 2): tau1, tau2
    scale_k: np.ndarray  # (N_T,)
    correction: np.ndarray  # (N_T, N_D) OCV correction D at its SOC nodes
    rmse_v: float


@dataclass
class Prepared:
    """Per-sample interpolation indices of one series, fixed during the fit."""

    series: Series
    dt: np.ndarray  # 0 at the first sample (RC voltages start relaxed), else the step
    ibar: np.ndarray  # mean current over (t_{k-1}, t_k]
    j: np.ndarray  # lower temperature node
    j1: np.ndarray  # upper temperature node
    w: np.ndarray  # weight of the upper node (linear in 1/T, as EcmTables)
    i: np.ndarray  # lower SOC node of the R grid
    f: np.ndarray
    ic: np.ndarray  # lower SOC node of the correction grid
    fc: np.ndarray


def grid_position(soc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.clip(soc, 0.0, 1.0) * (n - 1)
    i = np.minimum(pos.astype(np.int64), n - 2)
    return i, pos - i


class EcmLeastSquares:
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
        series: Sequence[Series],
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
        self.ocv_ref = np.ascontiguousarray(np.atleast_2d(ocv_ref), dtype=np.float64)  # (N_T, N_ocv)
        self.n_nodes, self.n_correction = n_nodes, n_correction
        self.free_scale = free_scale
        self.smooth_r, self.smooth_ocv, self.level_ocv = smoothness
        self.smooth_t = smooth_t
        self.per_node = 3 * n_nodes + 2 + int(free_scale) + n_correction
        self.prepared = [self._prepare(s) for s in series]
        self.n_samples = sum(len(s.voltage) for s in series)

    def _prepare(self, s: Series) -> Prepared:
        n_t = len(self.nodes_c)
        if n_t == 1:
            j = np.zeros(len(s.soc), dtype=np.int64)
            j1, w = j, np.zeros(len(s.soc))
        else:
            j, w = temperature_weights(self.nodes_c, s.temperature)
            j1 = j + 1
        dt = np.full(len(s.soc), s.dt)
        dt[0] = 0.0
        i, f = grid_position(s.soc, self.n_nodes)
        ic, fc = grid_position(s.soc, self.n_correction)
        ibar = 0.5 * (s.current + np.concatenate([s.current[:1], s.current[:-1]]))
        return Prepared(s, dt, ibar, j, j1, w, i, f, ic, fc)

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(log R (N_T, 3, N_P), log tau (N_T, 2), k (N_T,), D (N_T, N_D))."""
        node = theta.reshape(len(self.nodes_c), self.per_node)
        n = 3 * self.n_nodes
        log_r = node[:, :n].reshape(-1, 3, self.n_nodes)
        log_tau = node[:, n : n + 2]
        k = node[:, n + 2] if self.free_scale else np.ones(len(node))
        return log_r, log_tau, k, node[:, n + 2 + int(self.free_scale) :]

    def voltage(self, theta: np.ndarray, p: Prepared) -> np.ndarray:
        """Model voltage of one prepared series (compiled: :func:`bsoc.ekf.fit_kernel.fit_voltage`)."""
        log_r, log_tau, k, correction = (np.ascontiguousarray(a, dtype=np.float64)
                                         for a in self.unpack(theta))
        return fit_voltage(log_r, log_tau, k, correction, self.ocv_ref, p.series.soc,
                           p.series.current, p.dt, p.j, p.j1, p.w, p.i, p.f, p.ic, p.fc)

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
    ) -> EcmFit:
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

    def evaluate(self, theta: np.ndarray) -> EcmFit:
        """The parameters held in ``theta`` and their voltage RMSE on the series."""
        log_r, log_tau, k, correction = self.unpack(theta)
        error = np.concatenate([self.voltage(theta, p) - p.series.voltage for p in self.prepared])
        return EcmFit(
            theta=theta.copy(),
            log_r=log_r.copy(),
            tau=np.exp(log_tau),
            scale_k=np.asarray(k, dtype=np.float64).copy(),
            correction=correction.copy(),
            rmse_v=float(np.sqrt(np.mean(error**2))),
        )

