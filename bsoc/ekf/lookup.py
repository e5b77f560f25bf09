"""ECM look-ups in compiled code: the one interpolation of the ECM tables.

:class:`~bsoc.ekf.ecm.EcmTables` packs its tables into one float64 block
(:func:`pack_tables`); the functions here read it for one (SOC, temperature) point at a
time, so compiled filters call them per stream, and :func:`lookup_points` serves whole
arrays of points to numpy code. The interpolation is the ECM's: bilinear in (1/T, SOC) with
T in kelvin, OCV and its slope linearly, resistances and time constants in log space,
clamped outside the grids.

Block layout: ``[n_t, n_s, n_p, t_grid (n_t), fine (2, n_t, n_s), coarse (3, n_t, n_p),
per_t (3, n_t)]`` with ``fine`` = (OCV, dOCV/dSOC), ``coarse`` = log(R0, R1, R2), ``per_t``
= (log tau1, log tau2, capacity); a single-temperature table is stored with its row twice.
"""

from __future__ import annotations

import numba
import numpy as np

from bsoc.data.schema import KELVIN
HEADER = 3
# Fields of a point, in the order ecm_point returns them.
POINT_FIELDS = ("ocv", "docv", "r0", "r1", "r2", "tau1", "tau2", "capacity_ah")


def pack_tables(
    t_grid: np.ndarray, fine: np.ndarray, coarse: np.ndarray, per_t: np.ndarray
) -> np.ndarray:
    """One contiguous float64 block from the look-up stacks (see the module docstring)."""
    n_t, n_s, n_p = len(t_grid), fine.shape[2], coarse.shape[2]
    if fine.shape != (2, n_t, n_s) or coarse.shape != (3, n_t, n_p) or per_t.shape != (3, n_t):
        raise ValueError("inconsistent ECM look-up stacks")
    parts = [np.array([n_t, n_s, n_p], dtype=np.float64), t_grid, fine, coarse, per_t]
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])


@numba.njit(cache=True, inline="always")
def temperature_weight(block: np.ndarray, temperature_c: float) -> tuple[int, float]:
    """Row j and weight w (linear in 1/T, clamped to [0, 1]) of a temperature."""
    n_t = int(block[0])
    j = 0
    while j < n_t - 2 and block[HEADER + j + 1] <= temperature_c:
        j += 1
    low = 1.0 / (block[HEADER + j] + KELVIN)
    high = 1.0 / (block[HEADER + j + 1] + KELVIN)
    w = (1.0 / (temperature_c + KELVIN) - low) / (high - low)
    return j, min(max(w, 0.0), 1.0)


@numba.njit(cache=True, inline="always")
def _bilinear(block: np.ndarray, start: int, n: int, j: int, w: float, soc: float) -> float:
    """Interpolate the (n_t, n) table at ``block[start:]`` between rows j, j+1 at ``soc``."""
    pos = soc * (n - 1)
    i = min(int(pos), n - 2)
    f = pos - i
    low = block[start + j * n + i] * (1 - f) + block[start + j * n + i + 1] * f
    high = block[start + (j + 1) * n + i] * (1 - f) + block[start + (j + 1) * n + i + 1] * f
    return low * (1 - w) + high * w


@numba.njit(cache=True, inline="always")
def _offsets(block: np.ndarray) -> tuple[int, int, int, int, int, int]:
    n_t, n_s, n_p = int(block[0]), int(block[1]), int(block[2])
    fine = HEADER + n_t
    coarse = fine + 2 * n_t * n_s
    per_t = coarse + 3 * n_t * n_p
    return n_t, n_s, n_p, fine, coarse, per_t


@numba.njit(cache=True, inline="always")
def ecm_point(
    block: np.ndarray, soc: float, temperature_c: float
) -> tuple[float, float, float, float, float, float, float, float]:
    """(OCV, dOCV/dSOC, R0, R1, R2, tau1, tau2, capacity) at one point (SOC clamped to [0, 1])."""
    n_t, n_s, n_p, fine, coarse, per_t = _offsets(block)
    j, w = temperature_weight(block, temperature_c)
    s = min(max(soc, 0.0), 1.0)
    ocv = _bilinear(block, fine, n_s, j, w, s)
    docv = _bilinear(block, fine + n_t * n_s, n_s, j, w, s)
    r0 = np.exp(_bilinear(block, coarse, n_p, j, w, s))
    r1 = np.exp(_bilinear(block, coarse + n_t * n_p, n_p, j, w, s))
    r2 = np.exp(_bilinear(block, coarse + 2 * n_t * n_p, n_p, j, w, s))
    tau1 = np.exp(block[per_t + j] * (1 - w) + block[per_t + j + 1] * w)
    tau2 = np.exp(block[per_t + n_t + j] * (1 - w) + block[per_t + n_t + j + 1] * w)
    capacity = block[per_t + 2 * n_t + j] * (1 - w) + block[per_t + 2 * n_t + j + 1] * w
    return ocv, docv, r0, r1, r2, tau1, tau2, capacity


@numba.njit(cache=True, inline="always")
def ecm_capacity(block: np.ndarray, temperature_c: float) -> float:
    """Usable capacity (Ah) at a temperature."""
    n_t, _, _, _, _, per_t = _offsets(block)
    j, w = temperature_weight(block, temperature_c)
    return block[per_t + 2 * n_t + j] * (1 - w) + block[per_t + 2 * n_t + j + 1] * w


@numba.njit(cache=True, inline="always")
def ocv_inverse(block: np.ndarray, voltage_v: float, temperature_c: float) -> float:
    """SOC whose OCV at ``temperature_c`` is ``voltage_v`` (clamped to [0, 1])."""
    n_t, n_s, _, fine, _, _ = _offsets(block)
    j, w = temperature_weight(block, temperature_c)
    below = 0
    for i in range(n_s):
        if block[fine + j * n_s + i] * (1 - w) + block[fine + (j + 1) * n_s + i] * w < voltage_v:
            below += 1
    i = min(max(below - 1, 0), n_s - 2)
    v_low = block[fine + j * n_s + i] * (1 - w) + block[fine + (j + 1) * n_s + i] * w
    v_high = block[fine + j * n_s + i + 1] * (1 - w) + block[fine + (j + 1) * n_s + i + 1] * w
    f = min(max((voltage_v - v_low) / (v_high - v_low), 0.0), 1.0)
    return (i + f) / (n_s - 1)


@numba.njit(cache=True)
def lookup_points(block: np.ndarray, soc: np.ndarray, temperature_c: np.ndarray) -> np.ndarray:
    """:func:`ecm_point` at every (soc[k], temperature_c[k]): (8, K) in ``POINT_FIELDS`` order."""
    out = np.empty((8, soc.shape[0]))
    for k in range(soc.shape[0]):
        point = ecm_point(block, soc[k], temperature_c[k])
        for q in range(8):
            out[q, k] = point[q]
    return out


@numba.njit(cache=True)
def ocv_inverse_points(block: np.ndarray, voltage_v: np.ndarray,
                       temperature_c: np.ndarray) -> np.ndarray:
    """:func:`ocv_inverse` at every point."""
    out = np.empty(voltage_v.shape[0])
    for k in range(voltage_v.shape[0]):
        out[k] = ocv_inverse(block, voltage_v[k], temperature_c[k])
    return out


@numba.njit(cache=True)
def capacity_points(block: np.ndarray, temperature_c: np.ndarray) -> np.ndarray:
    """:func:`ecm_capacity` at every temperature."""
    out = np.empty(temperature_c.shape[0])
    for k in range(temperature_c.shape[0]):
        out[k] = ecm_capacity(block, temperature_c[k])
    return out
