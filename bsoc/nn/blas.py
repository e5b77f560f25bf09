"""Single-precision matrix products from compiled code, and BLAS kept to one thread.

The batched LSTM step (:mod:`bsoc.nn.batched`) multiplies thin factors into slices of
preallocated buffers (a layer's input and recurrent inner products side by side in one
buffer, then one product with the stacked outer factors). ``np.dot`` inside numba cannot:
it allocates its result and needs contiguous operands. :func:`matmul` calls the BLAS
``sgemm`` numba's ``np.dot`` uses (SciPy's, through numba's helper library, so compiled
code stays cacheable) with explicit leading dimensions, writing in place.

The step runs its own threads, one per core, each over its share of the streams, so the
BLAS under them must stay on one thread, or the products would fight over the same cores.
OpenBLAS's thread count is process-wide (its ``_local`` setter too), so
:func:`single_threaded_blas` sets it for SciPy's own copy only: the one compiled code
calls, which numpy, torch and ONNX Runtime do not use.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numba
import numba.np.linalg  # noqa: F401  (registers numba's BLAS helper symbols)
import numpy as np
from numba import types

_XXGEMM = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,  # kind ('s': float32), transa, transb
    types.intp, types.intp, types.intp,  # m, n, k (column-major)
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,  # alpha, A, lda, B, ldb
    types.voidptr, types.voidptr, types.intp))  # beta, C, ldc


@numba.njit(cache=True, nogil=True)
def matmul(rows: int, cols: int, inner: int, a: np.ndarray, lda: int, b: np.ndarray, ldb: int,
           c: np.ndarray, ldc: int) -> None:
    """Row-major ``C = A @ B`` on float32 arrays that start at each operand's first element:
    A (rows, inner) with row stride ``lda``, B (inner, cols) with ``ldb``, C (rows, cols)
    with ``ldc``. (Column-major BLAS computes ``C^T = B^T A^T`` from the same memory.)"""
    scalars = np.empty(2, dtype=np.float32)
    scalars[0], scalars[1] = 1.0, 0.0
    _XXGEMM(ord("s"), ord("n"), ord("n"), cols, rows, inner, scalars.ctypes, b.ctypes, ldb,
            a.ctypes, lda, scalars[1:].ctypes, c.ctypes, ldc)


@cache
def single_threaded_blas() -> bool:
    """Keep SciPy's bundled OpenBLAS on one thread; False where it cannot be found (a SciPy
    linked to a shared system BLAS), which leaves BLAS as it is: slower, not wrong."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library, so that it is listed)
    from threadpoolctl import ThreadpoolController

    bundled = (Path(scipy.__file__).resolve().parent.parent / "scipy.libs").as_posix()
    found = False
    for library in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if Path(library.filepath).resolve().as_posix().startswith(bundled):
            library.set_num_threads(1)
            found = True
    return found
