"""The identification's ECM voltage in one compiled pass over a series.

:class:`~bsoc.ekf.ecm_fit.EcmLeastSquares` evaluates its voltage tens of thousands of times
per fit (finite-difference Jacobians), so the per-sample interpolation of the parameters runs
here in one compiled loop instead of a dozen numpy temporaries, as
:meth:`~bsoc.ekf.ecm.EcmTables.lookup` interpolates: log R linear in SOC, then log R, log tau
and OCV linear in the temperature weight ``w``; the OCV at a node is
``OCV_ref(1 - k (1 - s)) + D(s)``. The voltage is then the one ECM model,
:func:`~bsoc.ekf.ecm.rc_terminal_voltage`. ``tests/test_ekf_fit_kernel.py`` holds it equal to
the numpy formulation. With ``w == 0`` the upper node is not read: its terms carry weight 0,
so skipping them changes no bit.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from bsoc.ekf.ecm import rc_terminal_voltage


@numba.njit(cache=True)
def _ocv_at(ocv_ref: np.ndarray, correction: np.ndarray, k: np.ndarray, node: int,
            soc: float, ic: int, fc: float) -> float:
    """OCV at temperature node ``node``: the scaled reference curve plus the correction D."""
    n_ocv = ocv_ref.shape[1]
    mapped = min(max(1.0 - k[node] * (1.0 - soc), 0.0), 1.0)
    pos = mapped * (n_ocv - 1)
    i = min(int(pos), n_ocv - 2)
    f = pos - i
    row = min(node, ocv_ref.shape[0] - 1)  # (a single shared curve is allowed)
    base = ocv_ref[row, i] * (1 - f) + ocv_ref[row, i + 1] * f
    return base + correction[node, ic] * (1 - fc) + correction[node, ic + 1] * fc


@numba.njit(cache=True)
def fit_voltage(
    log_r: np.ndarray,
    log_tau: np.ndarray,
    k: np.ndarray,
    correction: np.ndarray,
    ocv_ref: np.ndarray,
    soc: np.ndarray,
    current: np.ndarray,
    dt: np.ndarray,
    j: np.ndarray,
    j1: np.ndarray,
    w: np.ndarray,
    i: np.ndarray,
    f: np.ndarray,
    ic: np.ndarray,
    fc: np.ndarray,
) -> np.ndarray:
    """Model voltage (T,) of one prepared series (fields of :class:`~bsoc.ekf.ecm_fit.Prepared`).

    ``log_r`` (N_T, 3, N_P), ``log_tau`` (N_T, 2), ``k`` (N_T,), ``correction`` (N_T, N_D) at
    the temperature nodes; ``ocv_ref`` (N_T or 1, N_ocv); ``dt[0] = 0`` (RC pairs start relaxed).
    """
    n = len(soc)
    r = np.empty((3, n))
    tau = np.empty((2, n))
    ocv = np.empty(n)
    for t in range(n):
        lo, hi, wt, it, ft = j[t], j1[t], w[t], i[t], f[t]
        for q in range(3):
            value = log_r[lo, q, it] * (1 - ft) + log_r[lo, q, it + 1] * ft
            if wt != 0.0:
                upper = log_r[hi, q, it] * (1 - ft) + log_r[hi, q, it + 1] * ft
                value = value * (1 - wt) + upper * wt
            r[q, t] = math.exp(value)
        for q in range(2):
            value = log_tau[lo, q]
            if wt != 0.0:
                value = value * (1 - wt) + log_tau[hi, q] * wt
            tau[q, t] = math.exp(value)
        ocv[t] = _ocv_at(ocv_ref, correction, k, lo, soc[t], ic[t], fc[t])
        if wt != 0.0:
            upper_ocv = _ocv_at(ocv_ref, correction, k, hi, soc[t], ic[t], fc[t])
            ocv[t] = ocv[t] * (1 - wt) + upper_ocv * wt
    return rc_terminal_voltage(ocv, r[0], r[1], tau[0], r[2], tau[1], current, dt)
