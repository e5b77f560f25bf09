"""The batched step's BLAS: MKL where PyTorch carries it, SciPy's OpenBLAS on request, the
same products either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bsoc.nn.blas import blas, blas_threads, matmul

STEP = """
import json, sys
import numpy as np
import torch
from bsoc.nn.blas import blas
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork
torch.manual_seed(0)
estimator = LstmSocEstimator(SocNetwork(NetworkConfig(hidden_sizes=(32, 16))))
rng = np.random.default_rng(1)
samples = np.column_stack([np.zeros(40), 3.6 + 0.4 * rng.random(40), -2 * rng.random(40),
                           25 * rng.random(40)])
soc, states = estimator.step_batch(samples, np.zeros((40, estimator.initial_state().size)))
soc, states = estimator.step_batch(samples, states)
print(json.dumps({"blas": blas().name, "soc": soc.tolist()}))
"""


def _run(code: str, choice: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "BSOC_BLAS": choice}, timeout=300)


def test_matmul_writes_a_row_major_product_into_strided_slices() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 9)).astype(np.float32)  # rows 5, inner 7 of a stride of 9
    b = rng.standard_normal((7, 6)).astype(np.float32)
    c = np.full((5, 8), 7.0, np.float32)  # the product goes into columns 2..5
    matmul(5, 4, 7, a, 9, b[:, 1:], 6, c[:, 2:], 8)
    np.testing.assert_allclose(c[:, 2:6], a[:, :7] @ b[:, 1:5], rtol=1e-5, atol=1e-5)
    assert np.all(c[:, :2] == 7.0) and np.all(c[:, 6:] == 7.0)  # nothing else written


def test_blas_threads_restores_the_threads_limit_of_the_caller() -> None:
    chosen = blas()
    if chosen.thread_local is None:
        pytest.skip("SciPy's OpenBLAS is limited process-wide, not per thread")
    previous = chosen.thread_local(3)
    try:
        with blas_threads(1):
            assert chosen.thread_local(1) == 1  # inside: one thread
        assert chosen.thread_local(3) == 3  # after: what the caller had
        with blas_threads(2):
            assert chosen.thread_local(2) == 2
        assert chosen.thread_local(3) == 3
    finally:
        chosen.thread_local(previous)


def test_openblas_on_request_gives_the_same_step_as_the_default() -> None:
    default, openblas = _run(STEP, ""), _run(STEP, "openblas")
    assert default.returncode == 0 and openblas.returncode == 0, default.stderr + openblas.stderr
    first, second = json.loads(default.stdout), json.loads(openblas.stdout)
    assert second["blas"] == "openblas"
    np.testing.assert_allclose(first["soc"], second["soc"], atol=1e-5)


def test_an_unknown_blas_is_refused_with_the_choices() -> None:
    result = _run("from bsoc.nn import blas", "atlas")
    assert result.returncode != 0
    assert "BSOC_BLAS='atlas'" in result.stderr and "'mkl', 'openblas'" in result.stderr
