"""The identification's ECM voltage in one compiled pass over a series.

:class:`~bsoc.ekf.ecm_fit.EcmLeastSquares` evaluates its voltage tens of thousands of times
per fit (finite-difference Jacobians), so the per-sample interpolation of the parameters and
the two RC recursions run here in a single loop instead of a dozen numpy temporaries. The
model is :func:`bsoc.ekf.ecm.ecm_voltage` with the parameters interpolated as
:meth:`~bsoc.ekf.ecm.EcmTables.lookup` does: log R linear in SOC, then log R, log tau and OCV
linear in the temperature weight ``w``; the OCV at a node is ``OCV_ref(1 - k (1 - s)) + D(s)``.
The RC pairs are integrated by their sequential recursion (the exact form that
:func:`~bsoc.ekf.ecm.linear_recursion` vectorises). ``tests/test_ekf_fit_kernel.py`` holds
it equal to the numpy formulation. With ``w == 0`` the upper node is not read: its terms
carry weight 0, so skipping them changes no bit.
"""

from __future__ import annotations

import math

import numba
import numpy as np


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
    out = np.empty(n)
    r = np.empty(3)
    tau = np.empty(2)
    r_prev = np.empty(3)
    tau_prev = np.empty(2)
    x1 = 0.0
    x2 = 0.0
    for t in range(n):
        lo, hi, wt, it, ft = j[t], j1[t], w[t], i[t], f[t]
        for q in range(3):
            value = log_r[lo, q, it] * (1 - ft) + log_r[lo, q, it + 1] * ft
            if wt != 0.0:
                upper = log_r[hi, q, it] * (1 - ft) + log_r[hi, q, it + 1] * ft
                value = value * (1 - wt) + upper * wt
            r[q] = math.exp(value)
        for q in range(2):
            value = log_tau[lo, q]
            if wt != 0.0:
                value = value * (1 - wt) + log_tau[hi, q] * wt
            tau[q] = math.exp(value)
        ocv = _ocv_at(ocv_ref, correction, k, lo, soc[t], ic[t], fc[t])
        if wt != 0.0:
            ocv = ocv * (1 - wt) + _ocv_at(ocv_ref, correction, k, hi, soc[t], ic[t], fc[t]) * wt
        if t == 0:
            r_prev[:] = r
            tau_prev[:] = tau
            ibar = current[0]
        else:
            ibar = 0.5 * (current[t] + current[t - 1])
        a1 = math.exp(-dt[t] / tau_prev[0])
        a2 = math.exp(-dt[t] / tau_prev[1])
        x1 = a1 * x1 + r_prev[1] * (1 - a1) * ibar  # driven with R and tau at the previous sample
        x2 = a2 * x2 + r_prev[2] * (1 - a2) * ibar
        out[t] = ocv + r[0] * current[t] + x1 + x2
        r_prev[:] = r
        tau_prev[:] = tau
    return out
