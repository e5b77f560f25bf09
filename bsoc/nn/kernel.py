"""One compiled call per streaming step: the network's weights packed in one buffer, stepped
by a fused numba kernel.

A live cell sends one sample at a time. In numpy a step is some forty small operations,
each paying a microsecond of interpreter and dispatch overhead, which hides what
compression saves: a projected network does a tenth of the multiply-accumulates but keeps
all 4H gate non-linearities per layer. This kernel therefore

* takes the whole network in one call (weights in one float32 buffer plus an integer
  layout table, so numba sees six arguments with the outputs, not forty);
* multiplies through each weight map's factors (dense: one, projected or SVD: two thin
  ones; a map whose rank saves no work, such as the 3-input layer's, is packed dense)
  with its own loops for a few streams and BLAS (``np.dot``) for many;
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
_BLOCK = 256  # streams stepped together: a block's gates stay in cache

# Layout row of one layer: hidden size, then (offset, rows, cols, transposed) of up to two
# input factors and two recurrent factors (rows 0: absent), then the bias offset. A factor
# with fewer columns than rows (a projector) is stored transposed, so that the single-
# stream loop is a few long dot products rather than many short vector updates.
_FIELDS = 4
_MAX_FACTORS = 2
_HIDDEN, _INPUT = 0, 1
_RECURRENT = _INPUT + _FIELDS * _MAX_FACTORS
_BIAS = _RECURRENT + _FIELDS * _MAX_FACTORS


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
def _sigmoid(x: np.float32) -> np.float32:
    return _HALF + _HALF * fast_tanh(_HALF * x)


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _add_product(x: np.ndarray, weights: np.ndarray, factor: np.ndarray, out: np.ndarray) -> None:
    """``out += x @ F`` for the factor ``F`` described by a layout ``factor`` entry."""
    offset, rows, cols, transposed = factor[0], factor[1], factor[2], factor[3]
    stored = weights[offset : offset + rows * cols]
    if transposed:
        matrix_t = stored.reshape(cols, rows)
        if x.shape[0] >= _SMALL_BATCH:
            out += np.dot(x, matrix_t.T)
            return
        for b in range(x.shape[0]):
            for j in range(cols):
                total = _F(0.0)
                for k in range(rows):
                    total += x[b, k] * matrix_t[j, k]
                out[b, j] += total
        return
    matrix = stored.reshape(rows, cols)
    if x.shape[0] >= _SMALL_BATCH:
        out += np.dot(x, matrix)
        return
    for b in range(x.shape[0]):
        k = 0
        while k + 4 <= rows:  # four rows a pass: a quarter of the loads and stores of ``out``
            v0, v1, v2, v3 = x[b, k], x[b, k + 1], x[b, k + 2], x[b, k + 3]
            for j in range(cols):
                out[b, j] += (v0 * matrix[k, j] + v1 * matrix[k + 1, j]
                              + v2 * matrix[k + 2, j] + v3 * matrix[k + 3, j])
            k += 4
        for k in range(k, rows):
            value = x[b, k]
            for j in range(cols):
                out[b, j] += value * matrix[k, j]


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _add_map(x: np.ndarray, weights: np.ndarray, row: np.ndarray, first: int,
             out: np.ndarray) -> None:
    """``out += map(x)`` for the (one- or two-factor) weight map at ``row[first:]``."""
    second = first + _FIELDS
    if row[second + 1] == 0:
        _add_product(x, weights, row[first:second], out)
        return
    inner = np.zeros((x.shape[0], row[first + 2]), dtype=np.float32)
    _add_product(x, weights, row[first:second], inner)
    _add_product(inner, weights, row[second : second + _FIELDS], out)


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _cell(gates: np.ndarray, bias: np.ndarray, c: np.ndarray, h: np.ndarray) -> None:
    """Gate non-linearities and the state update, in place on float32 ``c`` and ``h``
    (separate arrays of one type, so the loop vectorises)."""
    hidden = h.shape[1]
    for b in range(h.shape[0]):
        for j in range(hidden):
            i = _sigmoid(gates[b, j] + bias[j])
            f = _sigmoid(gates[b, hidden + j] + bias[hidden + j])
            g = fast_tanh(gates[b, 2 * hidden + j] + bias[2 * hidden + j])
            o = _sigmoid(gates[b, 3 * hidden + j] + bias[3 * hidden + j])
            c[b, j] = f * c[b, j] + i * g
            h[b, j] = o * fast_tanh(c[b, j])


@numba.njit(cache=True, fastmath=True, error_model="numpy")
def _step_block(samples: np.ndarray, states: np.ndarray, weights: np.ndarray,
                layout: np.ndarray, soc: np.ndarray, new_states: np.ndarray) -> None:
    batch = samples.shape[0]
    x = np.empty((batch, 3), dtype=np.float32)
    for b in range(batch):
        for k in range(3):
            x[b, k] = samples[b, 1 + k]  # time_s, voltage_v, current_a, temperature_c
    offset = 0
    for layer in range(layout.shape[0] - 1):
        row = layout[layer]
        hidden = row[_HIDDEN]
        h = np.empty((batch, hidden), dtype=np.float32)
        c = np.empty((batch, hidden), dtype=np.float32)
        for b in range(batch):
            for j in range(hidden):
                h[b, j] = states[b, offset + j]
                c[b, j] = states[b, offset + hidden + j]
        gates = np.zeros((batch, 4 * hidden), dtype=np.float32)
        _add_map(x, weights, row, _INPUT, gates)
        _add_map(h, weights, row, _RECURRENT, gates)
        _cell(gates, weights[row[_BIAS] : row[_BIAS] + 4 * hidden], c, h)
        for b in range(batch):
            for j in range(hidden):
                new_states[b, offset + j] = h[b, j]
                new_states[b, offset + hidden + j] = c[b, j]
        offset += 2 * hidden
        x = h
    row = layout[layout.shape[0] - 1]
    out = np.zeros((batch, 1), dtype=np.float32)
    _add_map(x, weights, row, _INPUT, out)
    for b in range(batch):
        soc[b] = _sigmoid(out[b, 0] + weights[row[_BIAS]])


@numba.njit(cache=True, fastmath=True, error_model="numpy", nogil=True)  # service threads run on
def step_packed(samples: np.ndarray, states: np.ndarray, weights: np.ndarray,
                layout: np.ndarray, soc: np.ndarray, new_states: np.ndarray) -> None:
    """``samples`` (B, 4) rows of time, V, I, T; ``states`` (B, S) -> ``soc`` (B,) and
    ``new_states`` (B, S), written in place.

    The caller allocates the outputs: boxing two arrays made in compiled code costs about
    0.5 us a call more (measured on empty kernels), a tenth of a compressed step.
    ``layout`` rows are the LSTM layers in order, then the fully connected layer. Many
    streams are stepped in blocks of ``_BLOCK`` so that each block's gates stay in cache.
    """
    batch = samples.shape[0]
    for start in range(0, batch, _BLOCK):
        stop = min(start + _BLOCK, batch)
        _step_block(samples[start:stop], states[start:stop], weights, layout,
                    soc[start:stop], new_states[start:stop])


@dataclass(frozen=True)
class PackedNetwork:
    """A network's weights as one float32 buffer and the layout table the kernel reads."""

    weights: np.ndarray  # (N,) float32
    layout: np.ndarray  # (layers + 1, 18) int64

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
            if len(factors) == 2:
                (n_in, rank), n_out = factors[0].shape, factors[1].shape[1]
                if rank * (n_in + n_out) >= n_in * n_out:  # too wide a rank to save work
                    factors = [factors[0] @ factors[1]]
            if len(factors) > _MAX_FACTORS:
                raise ModelFileError(
                    f"a weight map with {len(factors)} factors cannot be streamed",
                    remedy="use dense, projected or SVD maps (at most two factors)")
            fields: list[int] = []
            for factor in factors:
                transposed = factor.shape[1] < factor.shape[0]
                offset = place(factor.T if transposed else factor)
                fields += [offset, *factor.shape, int(transposed)]
            return fields + [0] * _FIELDS * (_MAX_FACTORS - len(factors))

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

    def step(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``samples`` (B, 4) rows of time_s, voltage_v, current_a, temperature_c, and
        ``states`` (B, S): C-contiguous float64 (other layouts compile another kernel)."""
        soc = np.empty(len(samples))
        new_states = np.empty(states.shape)
        step_packed(samples, states, self.weights, self.layout, soc, new_states)
        return soc, new_states
