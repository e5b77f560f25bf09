"""One compiled call per streaming step: the network's weights packed in one buffer, stepped
by a fused numba kernel.

A live cell sends one sample at a time. In numpy a step is some forty small operations,
each paying a microsecond of interpreter and dispatch overhead, which hides what
compression saves: a projected network does a tenth of the multiply-accumulates but keeps
all 4H gate non-linearities per layer. This kernel therefore

* takes the whole network in one call (weights in one float32 buffer plus an integer
  layout table, so numba sees four arguments, not forty);
* multiplies through each weight map's factors (dense: one, projected or SVD: two thin
  ones) with its own loops for a few streams and BLAS (``np.dot``) for many;
* computes the gates' sigmoid/tanh with a rational approximation (Eigen's
  ``generic_fast_tanh_float``; error below 1e-6, tested against ``np.tanh``) that the
  compiler vectorises, fused with the cell-state update, with no temporaries per gate.

Compiled code is cached on disk (``cache=True``), so only the first run on a machine pays
the few seconds of compilation. The equations are those of
:meth:`bsoc.nn.layers.Lstm.step`; tests hold this path to the batched forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from bsoc.errors import ModelFileError

_F = np.float32
_TANH_CLAMP = _F(9.0)  # tanh(9) = 1 - 3e-8: saturated in float32
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF, _ONE = _F(0.5), _F(1.0)
_SMALL_BATCH = 8  # below this many streams our loops beat a BLAS call's overhead

# Layout row of one layer: hidden size, then (offset, rows, cols) of up to two input factors
# and two recurrent factors (rows 0: absent), then the bias offset.
_HIDDEN, _INPUT, _RECURRENT, _BIAS = 0, 1, 7, 13
_MAX_FACTORS = 2


@numba.njit(cache=True, fastmath=True, inline="always")
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


@numba.njit(cache=True, fastmath=True, inline="always")
def _sigmoid(x: np.float32) -> np.float32:
    return _HALF + _HALF * fast_tanh(_HALF * x)


@numba.njit(cache=True, fastmath=True)
def _matmul(x: np.ndarray, weights: np.ndarray, offset: int, rows: int, cols: int,
            ) -> np.ndarray:
    matrix = weights[offset : offset + rows * cols].reshape(rows, cols)
    if x.shape[0] >= _SMALL_BATCH:
        return np.dot(x, matrix)
    out = np.zeros((x.shape[0], cols), dtype=np.float32)
    for b in range(x.shape[0]):
        for k in range(rows):
            value = x[b, k]
            for j in range(cols):
                out[b, j] += value * matrix[k, j]
    return out


@numba.njit(cache=True, fastmath=True)
def _apply_map(x: np.ndarray, weights: np.ndarray, row: np.ndarray, first: int) -> np.ndarray:
    y = _matmul(x, weights, row[first], row[first + 1], row[first + 2])
    if row[first + 4] > 0:
        y = _matmul(y, weights, row[first + 3], row[first + 4], row[first + 5])
    return y


@numba.njit(cache=True, fastmath=True, nogil=True)  # nogil: the service's threads keep going
def step_packed(features: np.ndarray, states: np.ndarray, weights: np.ndarray,
                layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``features`` (B, 3) float32, ``states`` (B, S) float64 -> SOC (B,), new states (B, S).

    ``layout`` rows are the LSTM layers in order, then the fully connected layer.
    """
    batch = features.shape[0]
    new_states = np.empty_like(states)
    x = features
    offset = 0
    for layer in range(layout.shape[0] - 1):
        row = layout[layer]
        hidden = row[_HIDDEN]
        h = np.empty((batch, hidden), dtype=np.float32)
        for b in range(batch):
            for j in range(hidden):
                h[b, j] = states[b, offset + j]
        gates = _apply_map(x, weights, row, _INPUT) + _apply_map(h, weights, row, _RECURRENT)
        bias = weights[row[_BIAS] : row[_BIAS] + 4 * hidden]
        for b in range(batch):
            for j in range(hidden):
                i = _sigmoid(gates[b, j] + bias[j])
                f = _sigmoid(gates[b, hidden + j] + bias[hidden + j])
                g = fast_tanh(gates[b, 2 * hidden + j] + bias[2 * hidden + j])
                o = _sigmoid(gates[b, 3 * hidden + j] + bias[3 * hidden + j])
                c = f * _F(states[b, offset + hidden + j]) + i * g
                h[b, j] = o * fast_tanh(c)
                new_states[b, offset + j] = h[b, j]
                new_states[b, offset + hidden + j] = c
        offset += 2 * hidden
        x = h
    row = layout[layout.shape[0] - 1]
    out = _apply_map(x, weights, row, _INPUT)
    soc = np.empty(batch, dtype=np.float64)
    for b in range(batch):
        soc[b] = _sigmoid(out[b, 0] + weights[row[_BIAS]])
    return soc, new_states


@dataclass(frozen=True)
class PackedNetwork:
    """A network's weights as one float32 buffer and the layout table the kernel reads."""

    weights: np.ndarray  # (N,) float32
    layout: np.ndarray  # (layers + 1, 14) int64

    @classmethod
    def pack(cls, lstm_layers: list[tuple[list[np.ndarray], list[np.ndarray], np.ndarray]],
             fc: tuple[list[np.ndarray], np.ndarray]) -> PackedNetwork:
        """Pack ``(input factors, recurrent factors, bias)`` per LSTM layer and the FC's
        ``(factors, bias)``; factors are ``(in, out)`` so that ``map(x) = x @ F1 @ F2``."""
        chunks: list[np.ndarray] = []
        size = 0

        def place(array: np.ndarray) -> int:
            nonlocal size
            chunks.append(np.ascontiguousarray(array, dtype=np.float32).ravel())
            size += chunks[-1].size
            return size - chunks[-1].size

        def factor_fields(factors: list[np.ndarray]) -> list[int]:
            if len(factors) > _MAX_FACTORS:
                raise ModelFileError(
                    f"a weight map with {len(factors)} factors cannot be streamed",
                    remedy="use dense, projected or SVD maps (at most two factors)")
            fields: list[int] = []
            for factor in factors:
                fields += [place(factor), *factor.shape]
            return fields + [0, 0, 0] * (_MAX_FACTORS - len(factors))

        rows = []
        for inputs, recurrent, bias in lstm_layers:
            rows.append([len(bias) // 4, *factor_fields(inputs), *factor_fields(recurrent),
                         place(bias)])
        factors, bias = fc
        if factors[-1].shape[1] != 1:
            raise ModelFileError("the streaming kernel expects one SOC output",
                                 remedy="use a network whose FC layer has one output")
        rows.append([1, *factor_fields(factors), *factor_fields([]), place(bias)])
        return cls(np.concatenate(chunks), np.asarray(rows, dtype=np.int64))

    def step(self, features: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return step_packed(np.ascontiguousarray(features, dtype=np.float32),
                           np.ascontiguousarray(states, dtype=np.float64),
                           self.weights, self.layout)
