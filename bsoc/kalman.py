"""The Kalman filter's equations for one stream, compiled: the core the EKF and the fusion
filter share.

Textbook names, as filterpy's ``KalmanFilter.predict()`` / ``update()`` use them::

    predict:  x = F x + B u                (the caller's model computes x)
              P = F P F' + Q               Q diagonal
    update:   y = z - h(x)                 one scalar measurement at a time
              S = H P H' + R,   K = P H' / S
              x = x + K y
              P = (I - K H) P (I - K H)' + K R K'      (Joseph form)

Two robustness measures a BMS needs, both keeping the covariance consistent:

* innovation gating: where the normalised innovation exceeds ``gate_sigma`` (a glitch),
  R is inflated for that update so that ``|y| / sqrt(S) = gate_sigma``; with that R the
  Joseph form keeps P valid. Nothing is ignored outright, so a large but real error still
  pulls the estimate, only more slowly.
* bounds: a state (SOC) is projected onto [low, high] along the covariance (estimate
  projection, Simon 2010): ``x - P e_i (x_i - clip(x_i)) / P_ii``, the minimum-variance
  projection, so the correlated states move with it; P is kept, which is conservative.

Every function works in place on one stream's ``x`` (n,) and ``P`` (n, n), so that a
compiled loop over streams is the whole batched filter, for one stream or thousands; the
caller passes the scratch arrays (:func:`scratch`), since allocating them per step would
cost more than the arithmetic of a few states.
"""

from __future__ import annotations

import numba
import numpy as np


SCRATCH_MATRICES = 2
SCRATCH_VECTORS = 2


@numba.njit(cache=True)
def scratch_size(n: int) -> int:
    """Floats of scratch one filter step of ``n`` states needs (see :func:`scratch`)."""
    return SCRATCH_MATRICES * n * n + SCRATCH_VECTORS * n


@numba.njit(cache=True, inline="always")
def scratch(work: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two (n, n) matrices and two (n,) vectors as views of ``work``."""
    m1 = work[: n * n].reshape(n, n)
    m2 = work[n * n : 2 * n * n].reshape(n, n)
    v1 = work[2 * n * n : 2 * n * n + n]
    v2 = work[2 * n * n + n : 2 * n * n + 2 * n]
    return m1, m2, v1, v2


@numba.njit(cache=True, inline="always")
def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a b`` for (n, n) matrices (zero entries of ``a``, most of F's, skipped)."""
    n = a.shape[0]
    out[:, :] = 0.0
    for i in range(n):
        for k in range(n):
            if a[i, k] != 0.0:
                for j in range(n):
                    out[i, j] += a[i, k] * b[k, j]


@numba.njit(cache=True, inline="always")
def _product_transposed(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a b'`` for (n, n) matrices."""
    n = a.shape[0]
    for i in range(n):
        for j in range(n):
            total = 0.0
            for k in range(n):
                total += a[i, k] * b[j, k]
            out[i, j] = total


@numba.njit(cache=True, inline="always")
def predict_covariance(P: np.ndarray, F: np.ndarray, q: np.ndarray, fp: np.ndarray) -> None:
    """``P = F P F' + diag(q)``, in place (``fp``: an (n, n) scratch matrix)."""
    _product(F, P, fp)
    _product_transposed(fp, F, P)
    for i in range(P.shape[0]):
        P[i, i] += q[i]


@numba.njit(cache=True, inline="always")
def update_scalar(
    x: np.ndarray, P: np.ndarray, y: float, H: np.ndarray, r: float, gate_sigma: float,
    a: np.ndarray, ap: np.ndarray, pht: np.ndarray, k: np.ndarray,
) -> float:
    """Joseph-form update with innovation ``y``, Jacobian ``H`` (n,) and noise ``r``, in
    place; R inflated where ``|y| / sqrt(S)`` would exceed ``gate_sigma``. Returns S.
    ``a``, ``ap`` (n, n) and ``pht``, ``k`` (n,) are scratch."""
    n = x.shape[0]
    pht[:] = 0.0
    for i in range(n):
        for j in range(n):
            pht[i] += P[i, j] * H[j]
    hph = 0.0
    for i in range(n):
        hph += H[i] * pht[i]
    s = max(hph + r, y * y / (gate_sigma * gate_sigma))
    r = s - hph
    for i in range(n):
        k[i] = pht[i] / s
        x[i] += k[i] * y
    for i in range(n):  # a = I - K H
        for j in range(n):
            a[i, j] = (1.0 if i == j else 0.0) - k[i] * H[j]
    _product(a, P, ap)
    _product_transposed(ap, a, P)
    for i in range(n):
        for j in range(n):
            P[i, j] += r * k[i] * k[j]
    for i in range(n):
        for j in range(i + 1, n):
            mean = 0.5 * (P[i, j] + P[j, i])
            P[i, j] = mean
            P[j, i] = mean
    return s


@numba.njit(cache=True, inline="always")
def project_bounds(x: np.ndarray, P: np.ndarray, index: int, low: float, high: float) -> None:
    """Project ``x`` onto ``low <= x[index] <= high`` along the covariance, in place."""
    bounded = min(max(x[index], low), high)
    excess = x[index] - bounded
    if excess == 0.0:
        return
    if P[index, index] > 0.0:
        scale = excess / P[index, index]
        for i in range(x.shape[0]):
            x[i] -= P[i, index] * scale
    x[index] = bounded  # exact bound despite rounding
