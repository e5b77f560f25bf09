"""The compiled streaming kernel: its tanh, its two matmul paths, its threads, its packing
errors."""

from __future__ import annotations

import numpy as np
import pytest

from bsoc.errors import ModelFileError
from bsoc.nn import batched
from bsoc.nn.blas import blas
from bsoc.nn.gates import fast_tanh
from bsoc.nn.kernel import _BIAS, _FIELDS, _INPUT, _RECURRENT, PackedNetwork


def test_fast_tanh_is_within_1e_6_of_tanh_and_saturates() -> None:
    grid = np.linspace(-20, 20, 4001, dtype=np.float32)
    approx = np.array([fast_tanh(value) for value in grid], dtype=np.float64)
    assert np.abs(approx - np.tanh(grid.astype(np.float64))).max() < 1e-6
    assert fast_tanh(np.float32(0.0)) == 0.0


def _random_network(rng: np.random.Generator) -> PackedNetwork:
    def f(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    return PackedNetwork.pack(
        [([f(3, 2), f(2, 40)], [f(10, 40)], f(40)),  # projected input map, dense recurrent
         ([f(10, 24)], [f(6, 3), f(3, 24)], f(24))],
        ([f(6, 1)], f(1)))


def _reference_step(samples: np.ndarray, states: np.ndarray, packed: PackedNetwork,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM equations in float64 numpy, read back from the packed buffer."""
    def chain(x: np.ndarray, row: np.ndarray, first: int) -> np.ndarray:
        for k in (first, first + _FIELDS):
            offset, rows, cols, transposed = row[k : k + _FIELDS]
            stored = packed.weights[offset : offset + rows * cols]
            if rows:
                x = x @ (stored.reshape(cols, rows).T if transposed else stored.reshape(rows, cols))
        return x

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-v))

    x, offset, new = samples[:, 1:], 0, np.empty_like(states)
    for row in packed.layout[:-1]:
        hidden = row[0]
        h, c = states[:, offset : offset + hidden], states[:, offset + hidden : offset + 2 * hidden]
        bias = packed.weights[row[_BIAS] : row[_BIAS] + 4 * hidden]
        gates = chain(x, row, _INPUT) + chain(h, row, _RECURRENT) + bias
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        new[:, offset : offset + 2 * hidden] = np.hstack([h, c])
        offset, x = offset + 2 * hidden, h
    row = packed.layout[-1]
    return sigmoid(chain(x, row, _INPUT)[:, 0] + packed.weights[row[_BIAS]]), new


@pytest.mark.parametrize("batch", [1, 3, 64, 600])  # own loops below 8, BLAS, 256-blocks
def test_kernel_step_matches_the_equations_in_float64(batch: int) -> None:
    rng = np.random.default_rng(batch)
    packed = _random_network(rng)
    samples = np.column_stack([np.zeros(batch), rng.normal(0, 1, (batch, 3))])
    states = rng.normal(0, 0.5, (batch, 2 * (10 + 6)))
    for _ in range(5):
        soc, new = packed.step(samples, states)
        want_soc, want_new = _reference_step(samples, states, packed)
        np.testing.assert_allclose(soc, want_soc, atol=2e-6)
        np.testing.assert_allclose(new, want_new, atol=2e-5)
        states = new


def test_a_batch_with_work_for_every_core_is_split_over_threads_and_still_exact() -> None:
    rng = np.random.default_rng(11)
    packed = _random_network(rng)
    # 3x2 + 2x40 and 10x40; 10x24 and 6x3 + 3x24; the FC's 6x1 (no rank here saves nothing)
    assert batched.macs_per_stream(packed.batch_layout) == 822
    assert packed.streams_per_thread == -(-batched.MACS_PER_THREAD // 822)
    batch = 2 * packed.streams_per_thread + 3  # two threads' worth (where there are two)
    samples = np.column_stack([np.zeros(batch), rng.normal(0, 1, (batch, 3))])
    states = rng.normal(0, 0.5, (batch, 2 * (10 + 6)))
    soc, new = packed.step(samples, states)
    want_soc, want_new = _reference_step(samples, states, packed)
    np.testing.assert_allclose(soc, want_soc, atol=2e-6)
    np.testing.assert_allclose(new, want_new, atol=2e-5)


def test_a_batch_on_one_thread_gives_its_blas_every_core_only_with_work_enough() -> None:
    chosen = blas()
    if chosen.thread_local is None:
        pytest.skip("SciPy's OpenBLAS is limited process-wide, not per thread")
    seen = []

    def work(lo: int, hi: int) -> None:
        limit = chosen.thread_local(1)  # returns the limit the step set for this thread
        chosen.thread_local(limit)
        seen.append((lo, hi, limit))

    enough = batched.MACS_PER_BLAS_SHARE // 5
    batched.split_over_threads(5, work, 10, enough)  # 5 rows, fewer than a thread's 10
    batched.split_over_threads(5, work, 10, enough - 1)
    assert seen == [(0, 5, batched.threads()), (0, 5, 1)]


def test_maps_of_more_than_two_factors_are_refused() -> None:
    three = [np.ones((3, 2), np.float32), np.ones((2, 2), np.float32),
             np.ones((2, 8), np.float32)]
    with pytest.raises(ModelFileError, match="3 factors"):
        PackedNetwork.pack([(three, [np.ones((2, 8), np.float32)], np.zeros(8, np.float32))],
                           ([np.ones((2, 1), np.float32)], np.zeros(1, np.float32)))


def test_a_map_whose_rank_saves_no_work_is_packed_dense() -> None:
    rng = np.random.default_rng(7)
    first, second = rng.normal(0, 0.3, (3, 3)), rng.normal(0, 0.3, (3, 40))  # 129 > 120 MACs
    recurrent, bias = rng.normal(0, 0.3, (10, 40)), rng.normal(0, 0.3, 40)
    fc = ([rng.normal(0, 0.3, (10, 1))], np.zeros(1))
    factored = PackedNetwork.pack([([first, second], [recurrent], bias)], fc)
    dense = PackedNetwork.pack([([first @ second], [recurrent], bias)], fc)
    np.testing.assert_array_equal(factored.layout, dense.layout)
    assert factored.layout[0, _INPUT + _FIELDS + 1] == 0  # no second input factor
    np.testing.assert_allclose(factored.weights, dense.weights, rtol=1e-6)
