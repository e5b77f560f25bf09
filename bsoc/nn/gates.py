"""The LSTM's gate non-linearities and cell update, compiled, shared by the single-stream
and the batched step (:mod:`bsoc.nn.kernel`, :mod:`bsoc.nn.batched`).

sigmoid and tanh are a rational approximation (Eigen's ``generic_fast_tanh_float``; error
below 1e-6, tested against ``np.tanh``) that the compiler vectorises, fused with the
cell-state update, with no temporaries per gate. The equations are those of
:meth:`bsoc.nn.layers.Lstm.step` (gate order i, f, g, o).
"""

from __future__ import annotations

import numba
import numpy as np

_F = np.float32
_TANH_CLAMP = _F(9.0)  # tanh(9) = 1 - 3e-8: saturated in float32
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF = _F(0.5)


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def fast_tanh(x: np.float32) -> np.float32:
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return x * p / q


@numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def sigmoid(x: np.float32) -> np.float32:
    return _HALF + _HALF * fast_tanh(_HALF * x)


@numba.njit(cache=True, fastmath=True, error_model="numpy", nogil=True)
def lstm_cell(gates: np.ndarray, bias: np.ndarray, c: np.ndarray, h: np.ndarray) -> None:
    """Gate non-linearities and the state update, in place on float32 ``c`` and ``h``
    (B, H) from ``gates`` (B, 4H) without their ``bias`` (separate arrays of one type, so
    the loops vectorise). Two passes per stream, c then h: each pass's chain of dependent
    operations is shorter, so more of them overlap (measured: 7 % faster than one pass)."""
    hidden = h.shape[1]
    for b in range(h.shape[0]):
        for j in range(hidden):
            i = sigmoid(gates[b, j] + bias[j])
            f = sigmoid(gates[b, hidden + j] + bias[hidden + j])
            g = fast_tanh(gates[b, 2 * hidden + j] + bias[2 * hidden + j])
            c[b, j] = f * c[b, j] + i * g
        for j in range(hidden):
            o = sigmoid(gates[b, 3 * hidden + j] + bias[3 * hidden + j])
            h[b, j] = o * fast_tanh(c[b, j])
