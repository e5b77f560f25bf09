"""The equivalent-circuit model (ECM): a Thevenin cell with R0 and two RC pairs.

Terminal voltage (discharge current negative, so every drop below OCV is ``R * I < 0``)::

    V_k = OCV(SOC_k, T_k) + R0(SOC_k, T_k) * I_k + V1_k + V2_k
    Vi_k = a_i * Vi_{k-1} + Ri(SOC_{k-1}, T_{k-1}) * (1 - a_i) * Ibar_k,   a_i = exp(-dt_k / tau_i)
    SOC_k = SOC_{k-1} + Ibar_k * dt_k / (3600 * Q)

``Ibar_k = (I_{k-1} + I_k) / 2`` is the mean current over the interval (trapezoid, the same
rule :func:`bsoc.data.schema.coulomb_soc` uses for the reference SOC), and the RC update is the
exact solution for a current held at ``Ibar_k``. The capacitances are ``Ci = tau_i / Ri``.

All parameters live in :class:`EcmTables`: OCV on a fine uniform SOC grid, R0/R1/R2 on a coarse
uniform SOC grid, tau1/tau2 and the usable capacity per table temperature. Look-ups interpolate
bilinearly in (1/T, SOC) with T the *measured cell temperature* of each sample (absolute, in
kelvin): OCV linearly, resistances and time constants in log space, so that between two table
temperatures ``log R`` is linear in ``1/T`` -- an Arrhenius law with a locally fitted activation
energy, always positive. Outside the grids the look-ups clamp, so the functions are continuous
everywhere and every look-up is vectorised over any number of streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from bsoc.data.schema import KELVIN, coulomb_soc
from bsoc.ekf.lookup import capacity_points, lookup_points, ocv_inverse_points, pack_tables
from bsoc.errors import ConfigError

TABLE_FIELDS: tuple[str, ...] = (
    "temperature_c",
    "soc_grid",
    "ocv_v",
    "param_soc_grid",
    "r0_ohm",
    "r1_ohm",
    "r2_ohm",
    "tau1_s",
    "tau2_s",
    "capacity_ah",
)


@dataclass(frozen=True)
class EcmPoint:
    """ECM parameters at given (SOC, T) points; every field has the look-up's shape."""

    ocv: np.ndarray
    docv: np.ndarray  # dOCV/dSOC (V per unit SOC): the EKF's Jacobian entry
    r0: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    tau1: np.ndarray
    tau2: np.ndarray
    capacity_ah: np.ndarray


def _uniform_grid(grid: np.ndarray, name: str) -> None:
    if grid.ndim != 1 or len(grid) < 2 or grid[0] != 0.0 or grid[-1] != 1.0:
        raise ConfigError(f"ECM {name} must be a 1-D grid from 0 to 1 with at least 2 points")
    if not np.allclose(np.diff(grid), 1.0 / (len(grid) - 1), rtol=0, atol=1e-9):
        raise ConfigError(f"ECM {name} must be uniformly spaced")


class EcmTables:
    """ECM parameter tables over temperature x SOC, with fast vectorised look-ups.

    ``temperature_c`` (N_T,) strictly increasing table temperatures (cell temperature);
    ``soc_grid`` (N_S,) and ``param_soc_grid`` (N_P,) uniform grids on [0, 1];
    ``ocv_v`` (N_T, N_S) strictly increasing in SOC; ``r0_ohm``, ``r1_ohm``, ``r2_ohm``
    (N_T, N_P); ``tau1_s``, ``tau2_s``, ``capacity_ah`` (N_T,), all positive.
    """

    def __init__(self, **tables: Any) -> None:
        missing = [f for f in TABLE_FIELDS if f not in tables]
        if missing:
            raise ConfigError(f"ECM tables are missing {missing}")
        arrays = {f: np.asarray(tables[f], dtype=np.float64) for f in TABLE_FIELDS}
        for name, values in arrays.items():
            if not np.isfinite(values).all():
                raise ConfigError(f"ECM table '{name}' holds NaN or inf")
        self.temperature_c = arrays["temperature_c"].reshape(-1)
        self.soc_grid = arrays["soc_grid"]
        self.param_soc_grid = arrays["param_soc_grid"]
        n_t, n_s, n_p = len(self.temperature_c), len(self.soc_grid), len(self.param_soc_grid)
        _uniform_grid(self.soc_grid, "soc_grid")
        _uniform_grid(self.param_soc_grid, "param_soc_grid")
        if n_t < 1 or (n_t > 1 and not (np.diff(self.temperature_c) > 0).all()):
            raise ConfigError("ECM temperature_c must be non-empty and strictly increasing")
        shapes = {
            "ocv_v": (n_t, n_s),
            "r0_ohm": (n_t, n_p),
            "r1_ohm": (n_t, n_p),
            "r2_ohm": (n_t, n_p),
            "tau1_s": (n_t,),
            "tau2_s": (n_t,),
            "capacity_ah": (n_t,),
        }
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                raise ConfigError(f"ECM table '{name}' has shape {arrays[name].shape}, not {shape}")
            if name != "ocv_v" and not (arrays[name] > 0).all():
                raise ConfigError(f"ECM table '{name}' must be positive everywhere")
        if not (np.diff(arrays["ocv_v"], axis=1) > 0).all():
            raise ConfigError("ECM ocv_v must increase strictly with SOC at every temperature")
        self.ocv_v = arrays["ocv_v"]
        self.r0_ohm, self.r1_ohm, self.r2_ohm = arrays["r0_ohm"], arrays["r1_ohm"], arrays["r2_ohm"]
        self.tau1_s, self.tau2_s = arrays["tau1_s"], arrays["tau2_s"]
        self.capacity_ah = arrays["capacity_ah"]
        # Look-up stacks: (quantity, N_T, N) with one temperature row duplicated when N_T == 1
        # so that interpolation code has a single path.
        pad = (lambda a: np.concatenate([a, a], axis=0)) if n_t == 1 else (lambda a: a)
        slope = np.gradient(self.ocv_v, self.soc_grid, axis=1)
        fine = pad(np.stack([self.ocv_v, slope], axis=1)).transpose(1, 0, 2)
        coarse = pad(np.log(np.stack([self.r0_ohm, self.r1_ohm, self.r2_ohm], axis=1)))
        per_t = pad(
            np.stack([np.log(self.tau1_s), np.log(self.tau2_s), self.capacity_ah], axis=1)
        ).T
        t_grid = self.temperature_c if n_t > 1 else self.temperature_c + np.array([0.0, 1.0])
        self._block = pack_tables(t_grid, fine, coarse.transpose(1, 0, 2), per_t)

    def n_parameters(self) -> int:
        """Identified table entries (the SOC grids are fixed hyper-parameters, not counted)."""
        return int(
            sum(
                getattr(self, f).size
                for f in TABLE_FIELDS
                if f not in ("soc_grid", "param_soc_grid")
            )
        )

    @property
    def block(self) -> np.ndarray:
        """The tables as one float64 block for the compiled look-ups of :mod:`bsoc.ekf.lookup`."""
        return self._block

    def lookup(self, soc: np.ndarray, temperature_c: np.ndarray) -> EcmPoint:
        """All parameters at (soc, temperature) points (same shape; SOC clamped to [0, 1])."""
        soc = np.asarray(soc, dtype=np.float64)
        shape = soc.shape
        temperature = np.broadcast_to(np.asarray(temperature_c, dtype=np.float64), shape)
        values = lookup_points(self._block, np.ascontiguousarray(soc.reshape(-1)),
                               np.ascontiguousarray(temperature.reshape(-1)))
        return EcmPoint(*(row.reshape(shape) for row in values))

    def capacity(self, temperature_c: np.ndarray) -> np.ndarray:
        """Usable capacity (Ah) at the given temperatures (linear in 1/T, clamped)."""
        temperature = np.asarray(temperature_c, dtype=np.float64)
        return capacity_points(self._block, np.ascontiguousarray(temperature.reshape(-1))
                               ).reshape(temperature.shape)

    def ocv_inverse(self, voltage_v: np.ndarray, temperature_c: np.ndarray) -> np.ndarray:
        """SOC whose OCV at ``temperature_c`` equals ``voltage_v`` (clamped to [0, 1])."""
        voltage_v = np.asarray(voltage_v, dtype=np.float64).reshape(-1)
        temperature = np.broadcast_to(np.asarray(temperature_c, dtype=np.float64),
                                      voltage_v.shape)
        return ocv_inverse_points(self._block, np.ascontiguousarray(voltage_v),
                                  np.ascontiguousarray(temperature))

    def terminal_voltage(
        self,
        time_s: np.ndarray,
        current_a: np.ndarray,
        temperature_c: np.ndarray,
        soc: np.ndarray,
    ) -> np.ndarray:
        """Model voltage along a cycle whose SOC is known (RC voltages start relaxed at 0)."""
        p = self.lookup(soc, temperature_c)
        return ecm_voltage(p.ocv, p.r0, (p.r1, p.tau1), (p.r2, p.tau2), current_a,
                           np.diff(time_s, prepend=time_s[0]))

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f).tolist() for f in TABLE_FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EcmTables:
        return cls(**{f: data[f] for f in TABLE_FIELDS if f in data})


def temperature_weights(
    grid_c: np.ndarray, temperature_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interval index j and weight w of each temperature on ``grid_c`` (>= 2 increasing points).

    The weight is linear in the inverse absolute temperature (Arrhenius coordinate) and clamped
    to [0, 1], so a quantity interpolated as ``q[j] (1 - w) + q[j + 1] w`` is held at the end rows.
    """
    grid_c = np.asarray(grid_c, dtype=np.float64)
    j = np.clip(np.searchsorted(grid_c, temperature_c, side="right") - 1, 0, len(grid_c) - 2)
    inverse = 1.0 / (grid_c + KELVIN)
    w = (1.0 / (temperature_c + KELVIN) - inverse[j]) / (inverse[j + 1] - inverse[j])
    return j, np.clip(w, 0.0, 1.0)


def ecm_voltage(
    ocv: np.ndarray,
    r0: np.ndarray,
    rc1: tuple[np.ndarray, np.ndarray],
    rc2: tuple[np.ndarray, np.ndarray],
    current_a: np.ndarray,
    dt_s: np.ndarray,
) -> np.ndarray:
    """The terminal voltage of the module docstring along one sequence, from relaxed RC pairs.

    Every argument is (T,): the parameters at each sample (``rc1``, ``rc2`` as (R, tau)), the
    current, and the step to each sample (``dt_s[0] = 0``). The one ECM voltage model: the
    tables' :meth:`EcmTables.terminal_voltage` and the identification's least squares
    (:mod:`bsoc.ekf.fit_kernel`) both compute it in :func:`rc_terminal_voltage`.
    """
    def column(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float64)

    return rc_terminal_voltage(column(ocv), column(r0), column(rc1[0]), column(rc1[1]),
                               column(rc2[0]), column(rc2[1]), column(current_a), column(dt_s))


@numba.njit(cache=True)
def rc_terminal_voltage(ocv: np.ndarray, r0: np.ndarray, r1: np.ndarray, tau1: np.ndarray,
                        r2: np.ndarray, tau2: np.ndarray, current: np.ndarray,
                        dt: np.ndarray) -> np.ndarray:
    """The module docstring's equations, sample by sample (the RC pairs start relaxed).

    A sequential loop rather than a vectorised closed form: the RC coefficients vary with
    the cell temperature at every sample, and the loop is exact where ``exp(-cumsum)``
    forms need blocking against overflow.
    """
    out = np.empty(len(ocv))
    v1 = 0.0
    v2 = 0.0
    for k in range(len(ocv)):
        previous = max(k - 1, 0)  # driven with R and tau at the previous sample
        ibar = 0.5 * (current[k] + current[previous])
        a1 = math.exp(-dt[k] / tau1[previous])
        a2 = math.exp(-dt[k] / tau2[previous])
        v1 = a1 * v1 + r1[previous] * (1.0 - a1) * ibar
        v2 = a2 * v2 + r2[previous] * (1.0 - a2) * ibar
        out[k] = ocv[k] + r0[k] * current[k] + v1 + v2
    return out


def simulate_cycle(
    tables: EcmTables,
    time_s: np.ndarray,
    current_a: np.ndarray,
    temperature_c: np.ndarray,
    *,
    soc0: float,
    capacity_ah: float,
    voltage_noise_v: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ECM as a data generator: (SOC, noisy voltage) for a current profile.

    Data with known truth, for testing identification and the filter against the model
    they assume. SOC by trapezoidal coulomb counting, exactly as the reference SOC of a dataset.
    """
    soc = coulomb_soc(time_s, current_a, capacity_ah, soc0)
    voltage = tables.terminal_voltage(time_s, current_a, temperature_c, soc)
    noise = np.random.default_rng(seed).normal(0.0, voltage_noise_v, len(time_s))
    return soc, voltage + noise
