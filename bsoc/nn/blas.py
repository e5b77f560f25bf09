"""Single-precision matrix products from compiled code, on the fastest BLAS at hand, one
thread per caller.

The batched LSTM step (:mod:`bsoc.nn.batched`) multiplies thin factors into slices of
preallocated buffers (a layer's input and recurrent inner products side by side in one
buffer, then one product with the stacked outer factors). ``np.dot`` inside numba cannot:
it allocates its result and needs contiguous operands. :func:`matmul` calls a Fortran
``sgemm`` with explicit leading dimensions, writing in place, through one symbol,
``bsoc_sgemm``, bound when this module is imported:

* to Intel MKL's ``sgemm_``, which the x86 PyTorch wheels carry inside ``libtorch_cpu``:
  on the step's short products it is several times SciPy's OpenBLAS (measured on one
  core: the uncompressed layer's (16, 259) @ (259, 1024) for 16 streams 4.8x, a projected
  layer's (256, 20) @ (20, 1024) 3.8x, a (256, 259) @ (259, 1024) 1.2x);
* else to SciPy's OpenBLAS ``sgemm`` (the one numba's own ``np.dot`` calls). The
  environment variable ``BSOC_BLAS=openblas`` (or ``mkl``) makes the choice; the speed
  benchmark records which one ran.

The step runs its own threads, one per core, each over its share of the streams, so the
BLAS under them must stay on one thread, or the products would fight over the same cores;
a batch too small to share (see :func:`bsoc.nn.batched.split_over_threads`) runs on the
calling thread alone, and there MKL may use every core for its products. MKL is shared
with PyTorch, so it is limited per calling thread (``MKL_Set_Num_Threads_Local``, undone
when the step returns: :func:`blas_threads`); SciPy's OpenBLAS, which numpy, torch and
ONNX Runtime do not use, is set to one thread process-wide (its thread count is
process-wide only) and stays there.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import types

from bsoc.errors import ConfigError

_SYMBOL = "bsoc_sgemm"
_P = types.voidptr
# Fortran ABI: transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, all by
# reference, 32-bit integers (the LP64 interface both libraries export)
_SGEMM = types.ExternalFunction(_SYMBOL, types.void(*[_P] * 13))


@dataclass(frozen=True)
class Blas:
    """The library ``bsoc_sgemm`` is bound to."""

    name: str  # "mkl" or "openblas"
    address: int
    thread_local: ctypes._CFuncPtr | None  # MKL_Set_Num_Threads_Local, for MKL


def _mkl() -> Blas | None:
    """MKL inside PyTorch's CPU library, where the wheel has it (x86)."""
    import torch

    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        library = ctypes.CDLL(str(path))
        sgemm, local = library.sgemm_, library.MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    local.argtypes, local.restype = [ctypes.c_int], ctypes.c_int
    return Blas("mkl", ctypes.cast(sgemm, ctypes.c_void_p).value, local)


def _openblas() -> Blas:
    """SciPy's bundled BLAS, from the capsule its Cython interface exports."""
    from scipy.linalg import cython_blas

    capsule = ctypes.py_object(cython_blas.__pyx_capi__["sgemm"])
    name = ctypes.pythonapi.PyCapsule_GetName
    name.argtypes, name.restype = [ctypes.py_object], ctypes.c_char_p
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.argtypes, pointer.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    return Blas("openblas", pointer(capsule, name(capsule)), None)


BLAS_CHOICES = ("mkl", "openblas")


@cache
def blas() -> Blas:
    """The BLAS compiled code calls (bound once per process, before any call)."""
    wanted = os.environ.get("BSOC_BLAS", "")
    if wanted and wanted not in BLAS_CHOICES:
        raise ConfigError(f"BSOC_BLAS={wanted!r} is not a BLAS bsoc can use",
                          remedy=f"set it to one of {list(BLAS_CHOICES)}, or unset it")
    chosen = None if wanted == "openblas" else _mkl()
    if chosen is None and wanted == "mkl":
        raise ConfigError("BSOC_BLAS=mkl, but this PyTorch carries no MKL",
                          remedy="unset BSOC_BLAS to use SciPy's OpenBLAS")
    chosen = chosen or _openblas()
    llvm.add_symbol(_SYMBOL, chosen.address)
    return chosen


blas()  # the symbol must exist before numba links (or loads from its cache) a caller


@numba.njit(cache=True, nogil=True)
def matmul(rows: int, cols: int, inner: int, a: np.ndarray, lda: int, b: np.ndarray, ldb: int,
           c: np.ndarray, ldc: int) -> None:
    """Row-major ``C = A @ B`` on float32 arrays that start at each operand's first element:
    A (rows, inner) with row stride ``lda``, B (inner, cols) with ``ldb``, C (rows, cols)
    with ``ldc``. (Column-major BLAS computes ``C^T = B^T A^T`` from the same memory.)"""
    sizes = np.empty(6, dtype=np.int32)
    sizes[0], sizes[1], sizes[2] = cols, rows, inner
    sizes[3], sizes[4], sizes[5] = ldb, lda, ldc
    scalars = np.empty(2, dtype=np.float32)
    scalars[0], scalars[1] = 1.0, 0.0
    no_transpose = np.empty(1, dtype=np.uint8)
    no_transpose[0] = ord("N")
    _SGEMM(no_transpose.ctypes, no_transpose.ctypes, sizes[0:].ctypes, sizes[1:].ctypes,
           sizes[2:].ctypes, scalars.ctypes, b.ctypes, sizes[3:].ctypes, a.ctypes,
           sizes[4:].ctypes, scalars[1:].ctypes, c.ctypes, sizes[5:].ctypes)


@cache
def _openblas_single_threaded() -> bool:
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


def pin_blas_thread() -> None:
    """Keep this thread's products on one BLAS thread for good (a worker of the step's
    own pool, which runs nothing else)."""
    chosen = blas()
    if chosen.thread_local is not None:
        chosen.thread_local(1)
    else:
        _openblas_single_threaded()


@contextmanager
def blas_threads(count: int = 1) -> Iterator[None]:
    """This thread's products on ``count`` BLAS threads while the block runs (on MKL; SciPy's
    OpenBLAS stays on one); then MKL's limit for the thread is what it was (PyTorch in the
    same thread may use another)."""
    chosen = blas()
    if chosen.thread_local is None:
        _openblas_single_threaded()
        yield
        return
    previous = chosen.thread_local(count)
    try:
        yield
    finally:
        chosen.thread_local(previous)
