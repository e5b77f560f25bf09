"""One stream, one sample: :func:`bsoc.ekf.filter.ekf_step` in plain Python floats.

Why a second formulation: a single stream (the service's lone cell, the benchmark's batch-1
step) pays numpy's per-call overhead on some 150 tiny array operations, about 0.5 ms per
sample on a busy machine, for a 3-state filter whose arithmetic is a few hundred flops. The
same equations on Python floats with the tables pre-converted to lists cost a few tens of
microseconds. The vectorised step stays the reference: ``tests/test_ekf_single`` checks that
both give the same SOC and state (to 1e-12) on clean and on garbage samples, fresh, preset
and running streams. Rare paths (a fresh stream's initialisation from its first voltage)
call the vectorised table code, so they are identical by construction.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from bsoc.data.schema import MAX_CURRENT_C_RATE, VOLTAGE_RANGE_V
from bsoc.ekf.ecm import KELVIN, EcmTables
from bsoc.ekf.filter import (
    CAPACITY,
    FRESH,
    LAST_CURRENT,
    LAST_TEMPERATURE,
    LAST_TIME,
    RUNNING,
    STATUS,
    InitSettings,
    NoiseSettings,
)

_V_LOW, _V_HIGH = VOLTAGE_RANGE_V


class SingleStreamStep:
    """``step(sample, state) -> (soc, new_state)`` for one stream, as lists of floats.

    Built once per estimator from its tables and settings (noise must be scalar, or per
    table temperature for the voltage noise).
    """

    def __init__(self, tables: EcmTables, noise: NoiseSettings, init: InitSettings) -> None:
        self.tables = tables
        self.init = init
        self.t_grid = [float(t) for t in tables.block[3 : 3 + int(tables.block[0])]]
        self.inverse_t = [1.0 / (t + KELVIN) for t in self.t_grid]
        self.fine = tables._fine.tolist()  # [quantity][temperature row][SOC node]
        self.coarse = tables._coarse.tolist()
        self.per_t = tables._per_t.tolist()
        self.n_fine = len(self.fine[0][0])
        self.n_coarse = len(self.coarse[0][0])
        self.q_soc = float(noise.soc_std) ** 2
        self.q_rc = float(noise.rc_std) ** 2
        std = np.asarray(noise.voltage_std, dtype=np.float64).reshape(-1)
        self.voltage_std = std.tolist() if len(std) > 1 else None
        self.r_const = float(std[0]) ** 2
        self.gate2 = float(noise.gate_sigma) ** 2

    def _t_weight(self, temperature_c: float) -> tuple[int, float]:
        grid = self.t_grid
        j = min(max(bisect_right(grid, temperature_c) - 1, 0), len(grid) - 2)
        inv = self.inverse_t
        w = (1.0 / (temperature_c + KELVIN) - inv[j]) / (inv[j + 1] - inv[j])
        return j, min(max(w, 0.0), 1.0)

    @staticmethod
    def _bilinear(rows: list[list[float]], n: int, j: int, w: float, soc: float) -> float:
        pos = soc * (n - 1)
        i = min(int(pos), n - 2)
        f = pos - i
        low = rows[j][i] * (1 - f) + rows[j][i + 1] * f
        high = rows[j + 1][i] * (1 - f) + rows[j + 1][i + 1] * f
        return low * (1 - w) + high * w

    def _per_t(self, q: int, j: int, w: float) -> float:
        row = self.per_t[q]
        return row[j] * (1 - w) + row[j + 1] * w

    def step(self, sample: list[float], state: list[float]) -> tuple[float, list[float]]:
        """Advance one stream; same rules for bad samples as :func:`~bsoc.ekf.filter.ekf_step`."""
        time_s, voltage, current, temperature = sample
        status = state[STATUS]
        running = status == RUNNING
        if not math.isfinite(temperature):
            temperature = state[LAST_TEMPERATURE] if running else math.nan
        temp_ok = math.isfinite(temperature)
        temp_c = temperature if temp_ok else 25.0
        j, w = self._t_weight(temp_c)
        capacity = state[CAPACITY] if state[CAPACITY] > 0 else self._per_t(2, j, w)
        dt = time_s - state[LAST_TIME]
        usable = (
            math.isfinite(time_s)
            and math.isfinite(current)
            and temp_ok
            and abs(current) <= MAX_CURRENT_C_RATE * capacity
            and (not running or dt > 0)
        )
        if not usable:
            return (self.init.unknown_soc if status == FRESH else state[0]), list(state)
        v_ok = math.isfinite(voltage) and _V_LOW <= voltage <= _V_HIGH
        x0, x1, x2 = state[0], state[1], state[2]
        p = state[3:12]
        if status == FRESH:
            x0, x1, x2, p = self._initial(voltage, current, temp_c, capacity, v_ok)
        elif running:  # prediction over (t_prev, t] with parameters at the previous state
            ibar = 0.5 * (state[LAST_CURRENT] + current)
            jp, wp = self._t_weight(state[LAST_TEMPERATURE])
            s = min(max(x0, 0.0), 1.0)
            r1 = math.exp(self._bilinear(self.coarse[1], self.n_coarse, jp, wp, s))
            r2 = math.exp(self._bilinear(self.coarse[2], self.n_coarse, jp, wp, s))
            a1 = math.exp(-dt / math.exp(self._per_t(0, jp, wp)))
            a2 = math.exp(-dt / math.exp(self._per_t(1, jp, wp)))
            x0 = x0 + ibar * dt / (3600.0 * capacity)
            x1 = a1 * x1 + r1 * (1 - a1) * ibar
            x2 = a2 * x2 + r2 * (1 - a2) * ibar
            f = (1.0, a1, a2)
            q = (self.q_soc * dt, self.q_rc * dt, self.q_rc * dt)
            p = [p[3 * a + b] * f[a] * f[b] + (q[a] if a == b else 0.0)
                 for a in range(3) for b in range(3)]
        x0, x1, x2 = _project(x0, x1, x2, p)
        if v_ok and status != FRESH:  # a fresh stream's voltage set its start (see ekf_step)
            x0, x1, x2, p = self._update(x0, x1, x2, p, voltage, current, temp_c, j, w)
            x0, x1, x2 = _project(x0, x1, x2, p)
        new = [x0, x1, x2, *p, time_s, current, temp_c, state[CAPACITY], RUNNING]
        return x0, new

    def _initial(
        self, voltage: float, current: float, temp_c: float, capacity: float, v_ok: bool
    ) -> tuple[float, float, float, list[float]]:
        """A fresh stream's start, from the vectorised table code (rare, so exact by reuse)."""
        init = self.init
        if v_ok:
            guess = self.tables.lookup(np.array([init.unknown_soc]), np.array([temp_c]))
            corrected = voltage - float(guess.r0[0]) * current
            soc0 = float(self.tables.ocv_inverse(np.array([corrected]), np.array([temp_c]))[0])
        else:
            soc0 = init.unknown_soc
        rest = v_ok and abs(current) <= init.rest_c_rate * capacity
        std0 = init.rest_soc_std if rest else init.unknown_soc_std
        rc2 = init.rc_std**2
        return soc0, 0.0, 0.0, [std0**2, 0.0, 0.0, 0.0, rc2, 0.0, 0.0, 0.0, rc2]

    def _update(
        self,
        x0: float,
        x1: float,
        x2: float,
        p: list[float],
        voltage: float,
        current: float,
        temp_c: float,
        j: int,
        w: float,
    ) -> tuple[float, float, float, list[float]]:
        """Joseph-form scalar update with innovation gating (see :func:`bsoc.ekf.filter.update`)."""
        s = min(max(x0, 0.0), 1.0)
        ocv = self._bilinear(self.fine[0], self.n_fine, j, w, s)
        docv = self._bilinear(self.fine[1], self.n_fine, j, w, s)
        r0 = math.exp(self._bilinear(self.coarse[0], self.n_coarse, j, w, s))
        y = voltage - (ocv + r0 * current + x1 + x2)
        if self.voltage_std is None:
            r = self.r_const
        else:
            std = self.voltage_std
            std_t = std[j] * (1 - w) + std[j + 1] * w
            r = std_t * std_t
        h = (docv, 1.0, 1.0)
        pht = [p[3 * a] * h[0] + p[3 * a + 1] + p[3 * a + 2] for a in range(3)]
        hph = h[0] * pht[0] + pht[1] + pht[2]
        big = max(hph + r, y * y / self.gate2)
        r = big - hph
        k = [v / big for v in pht]
        x0, x1, x2 = x0 + k[0] * y, x1 + k[1] * y, x2 + k[2] * y
        a = [(1.0 if c == d else 0.0) - k[c] * h[d] for c in range(3) for d in range(3)]
        ap = [
            sum(a[3 * c + e] * p[3 * e + d] for e in range(3)) for c in range(3) for d in range(3)
        ]
        joseph = [
            sum(ap[3 * c + e] * a[3 * d + e] for e in range(3)) + r * k[c] * k[d]
            for c in range(3)
            for d in range(3)
        ]
        sym = [0.5 * (joseph[3 * c + d] + joseph[3 * d + c]) for c in range(3) for d in range(3)]
        return x0, x1, x2, sym


def _project(x0: float, x1: float, x2: float, p: list[float]) -> tuple[float, float, float]:
    """:func:`bsoc.ekf.filter.project_soc` for one stream."""
    bounded = min(max(x0, 0.0), 1.0)
    excess = x0 - bounded
    if excess == 0.0:
        return x0, x1, x2
    scale = excess / p[0]
    return bounded, x1 - p[3] * scale, x2 - p[6] * scale
