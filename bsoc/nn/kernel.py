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
* computes the gates with the fused cell update of :mod:`bsoc.nn.gates`.

:class:`PackedNetwork` also packs the same factors for the batched step of
:mod:`bsoc.nn.batched` (dense products over the batch, threads), which ``step`` uses from
``_SMALL_BATCH`` streams on and ``predict`` for whole sequences; ``step_packed`` stays the
one call a compiled caller (the fusion filter) makes for any batch.

Compiled code is cached on disk (``cache=True``), so only the first run on a machine pays
the few seconds of compilation. The equations are those of
:meth:`bsoc.nn.layers.Lstm.step`; tests hold this path to the batched forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from bsoc.errors import ModelFileError
from bsoc.nn import batched
from bsoc.nn.gates import lstm_cell, sigmoid
from bsoc.nn.packing import WeightBuffer

_F = np.float32
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
        lstm_cell(gates, weights[row[_BIAS] : row[_BIAS] + 4 * hidden], c, h)
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
        soc[b] = sigmoid(out[b, 0] + weights[row[_BIAS]])


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


def _streamable(factors: list[np.ndarray]) -> list[np.ndarray]:
    """A map's factors as the kernels apply them: a rank too wide to save work multiplied
    out, more than two factors refused."""
    if len(factors) == 2:
        (n_in, rank), n_out = factors[0].shape, factors[1].shape[1]
        if rank * (n_in + n_out) >= n_in * n_out:
            return [factors[0] @ factors[1]]
    if len(factors) > _MAX_FACTORS:
        raise ModelFileError(f"a weight map with {len(factors)} factors cannot be streamed",
                             remedy="use dense, projected or SVD maps (at most two factors)")
    return factors


@dataclass(frozen=True)
class PackedNetwork:
    """A network's weights as one float32 buffer and the layout table the kernel reads, and
    the same for the batched step."""

    weights: np.ndarray  # (N,) float32
    layout: np.ndarray  # (layers + 1, 18) int64
    batch_weights: np.ndarray  # (M,) float32
    batch_layout: np.ndarray  # (layers + 1, 9) int64
    stream_macs: int  # multiply-accumulates of one stream's step

    @classmethod
    def pack(cls, lstm_layers: list[tuple[list[np.ndarray], list[np.ndarray], np.ndarray]],
             fc: tuple[list[np.ndarray], np.ndarray]) -> PackedNetwork:
        """Pack ``(input factors, recurrent factors, bias)`` per LSTM layer and the FC's
        ``(factors, bias)``; factors are ``(in, out)`` so that ``map(x) = x @ F1 @ F2``."""
        if fc[0][-1].shape[1] != 1:
            raise ModelFileError("the streaming kernel expects one SOC output",
                                 remedy="use a network whose FC layer has one output")
        lstm_layers = [(_streamable(inputs), _streamable(recurrent), bias)
                       for inputs, recurrent, bias in lstm_layers]
        fc = (_streamable(fc[0]), fc[1])
        buffer = WeightBuffer()

        def factor_fields(factors: list[np.ndarray]) -> list[int]:
            fields: list[int] = []
            for factor in factors:
                transposed = factor.shape[1] < factor.shape[0]
                offset = buffer.place(factor.T if transposed else factor)
                fields += [offset, *factor.shape, int(transposed)]
            return fields + [0] * _FIELDS * (_MAX_FACTORS - len(factors))

        rows = []
        for inputs, recurrent, bias in lstm_layers:
            rows.append([len(bias) // 4, *factor_fields(inputs), *factor_fields(recurrent),
                         buffer.place(bias)])
        factors, bias = fc
        rows.append([1, *factor_fields(factors), *factor_fields([]), buffer.place(bias)])
        batch_weights, batch_layout = batched.pack(lstm_layers, fc)
        return cls(buffer.array(), np.asarray(rows, dtype=np.int64), batch_weights,
                   batch_layout, batched.macs_per_stream(batch_layout))

    @property
    def streams_per_thread(self) -> int:
        """The batched step's least share of a thread."""
        return batched.streams_per_thread(self.stream_macs)

    def step(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``samples`` (B, 4) rows of time_s, voltage_v, current_a, temperature_c, and
        ``states`` (B, S): C-contiguous float64 (other layouts compile another kernel)."""
        soc = np.empty(len(samples))
        new_states = np.empty(states.shape)
        if len(samples) < _SMALL_BATCH:
            step_packed(samples, states, self.weights, self.layout, soc, new_states)
            return soc, new_states

        def work(lo: int, hi: int) -> None:
            batched.step_streams(samples[lo:hi], states[lo:hi], self.batch_weights,
                                 self.batch_layout, soc[lo:hi], new_states[lo:hi])

        batched.split_over_threads(len(samples), work, self.streams_per_thread, self.stream_macs)
        return soc, new_states

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """SOC (B, T) of ``samples`` (B, T, 4), C-contiguous float64, from the zero state."""
        soc = np.empty(samples.shape[:2])

        def work(lo: int, hi: int) -> None:
            batched.run_sequences(samples[lo:hi], self.batch_weights, self.batch_layout,
                                  soc[lo:hi])

        # a sequence is much work; each of its steps multiplies all of them at once
        batched.split_over_threads(len(samples), work, 1, self.stream_macs)
        return soc
