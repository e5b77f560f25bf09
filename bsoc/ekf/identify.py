"""Identification of the ECM from training cycles (never typed in, never from val/test data).

``EcmIdentifier().fit(train_cycles)`` learns :class:`~bsoc.ekf.ecm.EcmTables`:

1. **OCV** per temperature from its low-rate tests, else a pseudo-OCV (:mod:`bsoc.ekf.ocv`).
2. **Dynamics per ambient group** (:mod:`bsoc.ekf.ecm_fit`): the pulse/drive cycles of one
   ambient, constant parameters. The *reference* group (own low-rate OCV nearest 25 degC)
   goes first with ``OCV(s) = OCV_lr(1 - k (1 - s)) + D(s)``: ``k`` absorbs the capacity
   convention between the low-rate test and the drive data (2.997 Ah against 2.9 Ah on the
   Panasonic data; fixed at 1 against a pseudo-OCV); ``D`` (piecewise linear, smooth, weakly
   pulled towards 0) absorbs the mean hysteresis offset of discharge-dominated drive data.
   That OCV (or a group's own low-rate curve under the same ``k``) is the base of every other
   group, which only adds its own small ``D`` (entropic change). ``k`` is shared because it
   is a property of the two tests, not of the temperature: fitted per group it trades
   against the dynamics (0.84 to 1.13 on the Panasonic cold drives) and so shifts the SOC
   the filter reads off the voltage. A single-branch low-rate curve is corrected for its IR
   drop once the group's resistances are known, and the group refitted.
3. **Joint fit over all temperatures**, started from the group fits, every parameter
   interpolated to each sample's measured cell temperature, which is the model the filter
   runs (:meth:`EcmTables.lookup`).
4. **Tables.** The joint fit's nodes become the table rows; capacity per row is the cycles'
   declared capacity (``capacity_ah``, else nominal), so a temperature dependence in the data
   carries over.

``report_`` holds the voltage RMSE per temperature of the final tables on the training
pulse/drive cycles (the low-rate cycles' own SOC basis differs by ``k``; they are not counted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bsoc.data.schema import OCV_LOAD_KIND, Cycle
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.ecm_fit import EcmFit, EcmLeastSquares, Series, r0_guess, uniform_series
from bsoc.ekf.ocv import ir_corrected, ocv_from_low_rate, ocv_row, pseudo_ocv
from bsoc.errors import ConfigError

REFERENCE_TEMPERATURE_C = 25.0
OwnOcv = dict[float, tuple[np.ndarray, float | None]]  # ambient -> (curve, branch current)


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


def _by_ambient(cycles: Sequence[Cycle]) -> dict[float, list[Cycle]]:
    groups: dict[float, list[Cycle]] = defaultdict(list)
    for cycle in cycles:
        groups[_ambient_key(cycle)].append(cycle)
    return groups


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
    current like the SOC does, so the filter cannot tell them apart: unbounded, such a pair
    (tau2 of two hours, R2 of half an ohm on the Panasonic cell) explains a discharge by its
    own voltage while the SOC stays at 100 %.

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

        The reference group first, then the other ambient groups nearest first (constant
        parameters: a robust start), then one joint fit of all groups with every parameter a
        function of each sample's measured cell temperature (table nodes at the ambients).
        """
        low_rate = [c for c in cycles if c.meta.load_kind == OCV_LOAD_KIND]
        dynamic = [c for c in cycles if c.meta.load_kind != OCV_LOAD_KIND]
        groups = _by_ambient(dynamic)
        if not groups:
            raise ConfigError(
                "the training split holds no pulse or drive cycles to identify R and tau from",
                remedy="put hppc or drive cycles into the training split",
            )
        low_rate_by_ambient = _by_ambient(low_rate)
        series = {a: [uniform_series(c) for c in found] for a, found in groups.items()}
        capacity = {
            a: float(np.median([_cycle_capacity(c) for c in found])) for a, found in groups.items()
        }
        ref_ambient = min([a for a in low_rate_by_ambient if a in groups] or list(groups),
                          key=lambda a: (abs(a - REFERENCE_TEMPERATURE_C), -a))
        own_ocv = self._own_ocv(low_rate_by_ambient, ref_ambient)
        fits, base, k = self._fit_groups(series, capacity, own_ocv, ref_ambient, on_group)
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
        final = {row["ambient_c"]: row for row in voltage_rmse_by_temperature(self.tables_,
                                                                              dynamic)}
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

    def _fit_groups(
        self,
        series: dict[float, list[Series]],
        capacity: dict[float, float],
        own_ocv: OwnOcv,
        ref_ambient: float,
        on_group: Callable[[float], None] | None,
    ) -> tuple[dict[float, EcmFit], dict[float, np.ndarray], float]:
        """Each ambient group alone: its fit, its base OCV row, and the reference's scale k.

        The reference group's OCV scale k is free (against its own low-rate curve, else a
        pseudo-OCV from every group's drives with k fixed at 1); every other group starts from
        its own low-rate curve under that k, or from the reference's OCV.
        """
        if ref_ambient in own_ocv:
            ref_own = own_ocv[ref_ambient]
        else:
            ref_own = (self._pseudo_ocv(series, capacity), None)
        ref_fit, ref_curve = self._fit_group(
            series[ref_ambient], ref_own, capacity[ref_ambient], free_scale=bool(own_ocv)
        )
        k = float(ref_fit.scale_k[0])
        base = {ref_ambient: ocv_row(ref_curve, k, ref_fit.correction[0])}
        fits = {ref_ambient: ref_fit}
        if on_group is not None:
            on_group(ref_ambient)
        for ambient in sorted(series, key=lambda a: abs(a - ref_ambient))[1:]:
            own = own_ocv.get(ambient)
            start = (ocv_row(own[0], k), own[1]) if own else (base[ref_ambient], None)
            fits[ambient], base[ambient] = self._fit_group(
                series[ambient], start, capacity[ambient], free_scale=False
            )
            if on_group is not None:
                on_group(ambient)
        return fits, base, k

    def _own_ocv(
        self, by_ambient: dict[float, list[Cycle]], ref_ambient: float
    ) -> dict[float, tuple[np.ndarray, float | None]]:
        """Each temperature's OCV from its own low-rate cycles, the reference temperature's
        first: it gives the shape where another temperature's test does not reach."""
        own: OwnOcv = {}
        if ref_ambient in by_ambient:
            own[ref_ambient] = ocv_from_low_rate(by_ambient[ref_ambient], self.ocv_points)
        base = own[ref_ambient][0] if own else None
        for ambient, found in by_ambient.items():
            if ambient != ref_ambient:
                own[ambient] = ocv_from_low_rate(found, self.ocv_points, base)
        return own

    @staticmethod
    def _ocv_source(
        ambient: float, ref_ambient: float, own_ocv: OwnOcv
    ) -> str:
        if ambient in own_ocv:
            ir = " (IR-corrected)" if own_ocv[ambient][1] is not None else ""
            return f"own low-rate cycle{ir}"
        if ref_ambient in own_ocv:
            return f"low-rate cycle at {ref_ambient:g} degC + fitted correction"
        return "pseudo-OCV from the drive data of all temperatures + fitted correction"

    def _pseudo_ocv(
        self, series: dict[float, list[Series]], capacity: dict[float, float]
    ) -> np.ndarray:
        """Voltage minus ``R0 I`` (R0 guessed per group), binned by SOC over all groups."""
        soc, v = [], []
        for ambient, found in series.items():
            r0 = r0_guess(found, capacity[ambient])
            soc += [s.soc for s in found]
            v += [s.voltage - r0 * s.current for s in found]
        return pseudo_ocv(soc, v, self.ocv_points)

    def _model(
        self,
        series: Sequence[Series],
        nodes_c: Sequence[float],
        curves: np.ndarray,
        *,
        free: bool,
    ) -> EcmLeastSquares:
        return EcmLeastSquares(
            series,
            nodes_c,
            curves,
            n_nodes=self.param_points,
            n_correction=self.correction_points,
            free_scale=free,
            smoothness=self.smoothness,
            smooth_t=self.smooth_t,
        )

    def _tau_ranges(self, series: Sequence[Series]) -> tuple[tuple[float, float], ...]:
        (low1, high1), (low2, high2) = self.tau_ranges_s
        return (max(low1, 1.0, max(s.dt for s in series)), high1), (low2, high2)

    def _fit_group(
        self,
        series: Sequence[Series],
        ocv: tuple[np.ndarray, float | None],
        capacity_ah: float,
        *,
        free_scale: bool,
    ) -> tuple[EcmFit, np.ndarray]:
        """Fit one group against an OCV curve; return the fit and the curve it used.

        ``ocv = (curve, branch current)``: a single-branch low-rate curve (current not None)
        is corrected for its IR drop with the fitted R, then the group is refitted.
        """
        curve, branch_current = ocv
        model = self._model(series, [0.0], curve, free=free_scale)
        start, low, high = model.start_and_bounds(
            r0_guess(series, capacity_ah), self._tau_ranges(series)
        )
        fit = model.fit(start, low, high, self.max_nfev)
        if branch_current is None:
            return fit, curve
        curve = ir_corrected(curve, np.exp(fit.log_r[0]).sum(axis=0), branch_current)
        model = self._model(series, [0.0], curve, free=free_scale)
        return model.fit(fit.theta, low, high, self.max_nfev), curve

    def _fit_joint(
        self,
        ambients: list[float],
        series: dict[float, list[Series]],
        curves: np.ndarray,
        start: np.ndarray,
    ) -> EcmFit:
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
        fit: EcmFit,
        curves: np.ndarray,
        capacity: dict[float, float],
    ) -> EcmTables:
        ocv_rows = [
            ocv_row(curve, 1.0, correction)
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
