"""The LSTM step for many streams at once: every layer as two dense BLAS products over the
batch, the gates vectorised over it, one thread per core.

For B streams a layer's maps are small dense products that BLAS runs near the machine's
peak, if they are shaped for it. Per layer and block of streams:

1. the maps' inner factors write side by side into one float32 buffer
   ``z = [x @ Q_in | h @ Q_out]`` (B, r_in + r_out); a dense map writes its input itself;
2. one product ``gates = z @ [W_in^T; W_rec^T]`` (B, 4H), the outer factors stacked at
   packing, so a projected layer costs one long-K product instead of two short ones and
   the gates are written once;
3. the gate non-linearities and the cell update, fused, vectorised along the gates
   (:func:`bsoc.nn.kernel.lstm_cell`, the same code as the single-stream step).

Buffers are allocated once per call and reused block by block (``BLOCK`` streams, whose
gates stay in the core's L2 cache); no Python runs per stream or per layer. Batches with
enough work per core (:func:`streams_per_thread`) are split over one thread per core
(the kernels release the GIL), with the BLAS kept on one thread under each
(:mod:`bsoc.nn.blas`); a smaller batch with enough work a step runs on one thread whose
BLAS uses every core (:func:`split_over_threads`).

Whole sequences (:func:`run_sequences`) keep each block's state in the float32 buffers
from step to step, so an offline pass over many cycles pays no state conversion at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numba
import numpy as np

from bsoc.nn.blas import blas_threads, matmul, pin_blas_thread
from bsoc.nn.gates import lstm_cell, sigmoid
from bsoc.nn.packing import WeightBuffer

# Layout row of one layer (the FC layer's too: hidden 1, no recurrent map): hidden size,
# input width, then the input map's inner rank and its inner factor's offset (rank 0: a
# dense map, whose input is the inner product itself), the same for the recurrent map,
# then the width of z, the offset of the stacked outer factors (z width, 4H), of the bias.
_HIDDEN, _WIDTH, _IN_RANK, _IN_INNER, _REC_RANK, _REC_INNER, _Z, _OUTER, _BIAS = range(9)
BLOCK = 256  # streams stepped together: 64 x 4H gates of a 256-unit layer are 256 KiB
# A thread pays for its hand-off only with enough work of its own. Measured on 2 cores with
# nothing else running: shares of 32 uncompressed streams (15 M multiply-accumulates) or of
# 128 compressed ones (6 M) gain 1.1-1.6x, shares of 8 uncompressed (3.7 M: each thread
# reads all the weights for few products) or 32 compressed (1.4 M) lose.
MACS_PER_THREAD = 5_000_000
MIN_STREAMS_PER_THREAD = 16
# A batch that stays on one thread lets BLAS split its products over every core from this
# much work a step: measured on 2 cores, the uncompressed network's 8 streams (3.7 M) gain
# 1.5x, the compressed one's 128 (5.8 M) a few %, its 32 (1.4 M) lose 20 %, 64 (2.9 M) even.
MACS_PER_BLAS_SHARE = 3_000_000
_F = np.float32


@numba.njit(cache=True, nogil=True)
def _regions(layout: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """Offsets in one scratch buffer: per LSTM layer its h, c and z; then the network's
    input, the gates (sized for the widest layer), the FC's z and its output."""
    layers = layout.shape[0] - 1
    at = np.empty(3 * layers + 4, dtype=np.int64)
    size, widest = 0, 0
    for layer in range(layers):
        hidden = layout[layer, _HIDDEN]
        for k, width in enumerate((hidden, hidden, layout[layer, _Z])):
            at[3 * layer + k] = size
            size += block * width
        widest = max(widest, 4 * hidden)
    for k, width in enumerate((3, widest, layout[layers, _Z], 1)):
        at[3 * layers + k] = size
        size += block * width
    return at, size


@numba.njit(cache=True, nogil=True, inline="always")
def _view(scratch: np.ndarray, start: int, rows: int, cols: int) -> np.ndarray:
    return scratch[start : start + rows * cols].reshape(rows, cols)


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _inner(x: np.ndarray, weights: np.ndarray, row: np.ndarray, rank_field: int, z: np.ndarray,
           column: int) -> int:
    """Write a map's inner product of ``x`` into ``z[:, column:]``; returns its width."""
    rank = row[rank_field]
    if rank == 0:
        z[:, column : column + x.shape[1]] = x
        return x.shape[1]
    matmul(x.shape[0], rank, x.shape[1], x, x.shape[1], weights[row[rank_field + 1]:], rank,
           z[:, column:], z.shape[1])
    return rank


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _advance(n: int, scratch: np.ndarray, at: np.ndarray, weights: np.ndarray,
             layout: np.ndarray, soc: np.ndarray) -> None:
    """One step of ``n`` streams whose inputs and (h, c) are in ``scratch``: h and c are
    updated in place, SOC written to ``soc`` (n,)."""
    layers = layout.shape[0] - 1
    x = _view(scratch, at[3 * layers], n, 3)
    for layer in range(layers):
        row = layout[layer]
        hidden = row[_HIDDEN]
        h = _view(scratch, at[3 * layer], n, hidden)
        c = _view(scratch, at[3 * layer + 1], n, hidden)
        z = _view(scratch, at[3 * layer + 2], n, row[_Z])
        split = _inner(x, weights, row, _IN_RANK, z, 0)
        _inner(h, weights, row, _REC_RANK, z, split)
        gates = _view(scratch, at[3 * layers + 1], n, 4 * hidden)
        matmul(n, 4 * hidden, row[_Z], z, row[_Z], weights[row[_OUTER]:], 4 * hidden, gates,
               4 * hidden)
        lstm_cell(gates, weights[row[_BIAS] : row[_BIAS] + 4 * hidden], c, h)
        x = h
    row = layout[layers]
    out = _view(scratch, at[3 * layers + 3], n, 1)
    if row[_IN_RANK] == 0:
        matmul(n, 1, x.shape[1], x, x.shape[1], weights[row[_OUTER]:], 1, out, 1)
    else:
        z = _view(scratch, at[3 * layers + 2], n, row[_Z])
        _inner(x, weights, row, _IN_RANK, z, 0)
        matmul(n, 1, row[_Z], z, row[_Z], weights[row[_OUTER]:], 1, out, 1)
    bias = weights[row[_BIAS]]
    for b in range(n):
        soc[b] = sigmoid(out[b, 0] + bias)


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _load_inputs(samples: np.ndarray, scratch: np.ndarray, at: np.ndarray, layers: int) -> None:
    """Voltage, current and temperature of ``samples`` (n, 4) as the network's input."""
    x = _view(scratch, at[3 * layers], samples.shape[0], 3)
    for b in range(samples.shape[0]):
        for k in range(3):
            x[b, k] = samples[b, 1 + k]


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def step_streams(samples: np.ndarray, states: np.ndarray, weights: np.ndarray,
                 layout: np.ndarray, soc: np.ndarray, new_states: np.ndarray) -> None:
    """``samples`` (B, 4), float64 ``states`` (B, S) -> ``soc`` (B,) and ``new_states``
    (B, S), written in place; the contract of :func:`bsoc.nn.kernel.step_packed`."""
    layers = layout.shape[0] - 1
    at, size = _regions(layout, BLOCK)
    scratch = np.empty(size, dtype=np.float32)
    for start in range(0, samples.shape[0], BLOCK):
        n = min(BLOCK, samples.shape[0] - start)
        _load_inputs(samples[start : start + n], scratch, at, layers)
        offset = 0
        for layer in range(layers):
            hidden = layout[layer, _HIDDEN]
            h = _view(scratch, at[3 * layer], n, hidden)
            c = _view(scratch, at[3 * layer + 1], n, hidden)
            for b in range(n):
                for j in range(hidden):
                    h[b, j] = states[start + b, offset + j]
                    c[b, j] = states[start + b, offset + hidden + j]
            offset += 2 * hidden
        _advance(n, scratch, at, weights, layout, soc[start : start + n])
        offset = 0
        for layer in range(layers):
            hidden = layout[layer, _HIDDEN]
            h = _view(scratch, at[3 * layer], n, hidden)
            c = _view(scratch, at[3 * layer + 1], n, hidden)
            for b in range(n):
                for j in range(hidden):
                    new_states[start + b, offset + j] = h[b, j]
                    new_states[start + b, offset + hidden + j] = c[b, j]
            offset += 2 * hidden


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def run_sequences(samples: np.ndarray, weights: np.ndarray, layout: np.ndarray,
                  soc: np.ndarray) -> None:
    """``samples`` (B, T, 4) from the zero state -> ``soc`` (B, T), written in place."""
    layers = layout.shape[0] - 1
    at, size = _regions(layout, BLOCK)
    scratch = np.zeros(size, dtype=np.float32)
    for start in range(0, samples.shape[0], BLOCK):
        n = min(BLOCK, samples.shape[0] - start)
        for layer in range(layers):
            hidden = layout[layer, _HIDDEN]
            _view(scratch, at[3 * layer], n, 2 * hidden)[:] = 0.0  # h and c, adjacent
        for t in range(samples.shape[1]):
            _load_inputs(samples[start : start + n, t], scratch, at, layers)
            _advance(n, scratch, at, weights, layout, soc[start : start + n, t])


@cache
def threads() -> int:
    """Cores this process may run on: the step's threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads() - 1, thread_name_prefix="bsoc-step",
                              initializer=pin_blas_thread)


def macs_per_stream(layout: np.ndarray) -> int:
    """Multiply-accumulates of one stream's step, from the :func:`pack` layout."""
    inner = layout[:, _WIDTH] * layout[:, _IN_RANK] + layout[:, _HIDDEN] * layout[:, _REC_RANK]
    outer = layout[:, _Z] * 4 * layout[:, _HIDDEN]
    outer[-1] = layout[-1, _Z]  # the FC layer: one output, no gates
    return int(inner.sum() + outer.sum())


def streams_per_thread(stream_macs: int) -> int:
    """The fewest streams a thread of the step should take (``stream_macs``: one stream's
    :func:`macs_per_stream`)."""
    return max(MIN_STREAMS_PER_THREAD, -(-MACS_PER_THREAD // stream_macs))


def split_over_threads(count: int, work: Callable[[int, int], None], least: int,
                       row_macs: int) -> None:
    """``work(lo, hi)`` over contiguous ranges of ``count`` rows, one range per thread (the
    calling thread takes the first), each of at least ``least`` rows, each thread's products
    on one BLAS thread. Fewer than ``2 least`` rows run on the calling thread alone, and its
    products on every core if a step of them (``row_macs`` each) is work enough
    (:data:`MACS_PER_BLAS_SHARE`): the weights are then read once, by BLAS threads that
    split each product's columns (measured on 2 cores, the uncompressed network at 16
    streams: 102k samples/s with one BLAS thread, 141-161k with two; split into two
    threads of 8 streams, 61k)."""
    parts = min(threads(), count // least)
    if parts <= 1:
        shared = count * row_macs >= MACS_PER_BLAS_SHARE
        with blas_threads(threads() if shared else 1):
            work(0, count)
        return
    with blas_threads(1):
        bounds = np.linspace(0, count, parts + 1).round().astype(int)
        futures = [_pool().submit(work, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
        work(bounds[0], bounds[1])
        for future in futures:
            future.result()


def pack(lstm_layers: list[tuple[list[np.ndarray], list[np.ndarray], np.ndarray]],
         fc: tuple[list[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The weights buffer and layout table of these kernels, from the same ``(input factors,
    recurrent factors, bias)`` per layer and FC ``(factors, bias)`` as
    :meth:`bsoc.nn.kernel.PackedNetwork.pack` (factors already reduced to at most two)."""
    buffer = WeightBuffer()

    def inner(factors: list[np.ndarray]) -> tuple[list[int], np.ndarray]:
        if len(factors) == 1:
            return [0, 0], factors[0]
        return [factors[0].shape[1], buffer.place(factors[0])], factors[1]

    rows, width = [], lstm_layers[0][0][0].shape[0]
    for inputs, recurrent, bias in lstm_layers:
        (in_fields, in_outer), (rec_fields, rec_outer) = inner(inputs), inner(recurrent)
        outer = np.vstack([in_outer, rec_outer])
        rows.append([len(bias) // 4, width, *in_fields, *rec_fields, len(outer),
                     buffer.place(outer), buffer.place(bias)])
        width = len(bias) // 4
    factors, bias = fc
    fields, outer = inner(factors)
    rows.append([1, width, *fields, 0, 0, len(outer), buffer.place(outer), buffer.place(bias)])
    return buffer.array(), np.asarray(rows, dtype=np.int64)
