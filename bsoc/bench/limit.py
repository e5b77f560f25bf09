"""The machine's limit: single-precision matrix-product throughput, measured in the same run.

A batched LSTM step is, layer by layer, a (B, K) @ (K, 4H) product plus the gates, so what
a float32 GEMM of that shape reaches on this machine is the ceiling for any runtime's
batched step. The benchmark records it and, for every model and runtime, the
multiply-accumulates per second it achieved as a fraction of it: how far a figure is from
what the machine can do, not only from another runtime.

numpy's and torch's products are both timed (each with its BLAS's own threads, all the
cores) and interleaved; the limit is the best repeat of the faster one, since it is what
the machine can do, and the training job sharing it only ever makes a repeat slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

PRODUCTS_PER_REPEAT = 5


def _blas_threads() -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    return [{"library": info["internal_api"], "file": info["filepath"].rsplit("/", 1)[-1],
             "threads": info["num_threads"]} for info in threadpool_info()]


def gemm_limit(shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """Multiply-accumulates per second of a float32 (M, K) @ (K, N) product, best of
    ``repeats`` rounds of numpy and torch (``PRODUCTS_PER_REPEAT`` products each)."""
    import torch

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out.copy())
    products: dict[str, Callable[[], object]] = {
        "numpy": lambda: np.matmul(a, b, out=out),
        "torch": lambda: torch.mm(ta, tb, out=tout),
    }
    rates: dict[str, list[float]] = {name: [] for name in products}
    for product in products.values():
        product()  # first call: thread pools start, pages touched
    for _ in range(repeats):
        for name, product in products.items():
            start = time.perf_counter()
            for _ in range(PRODUCTS_PER_REPEAT):
                product()
            rates[name].append(m * k * n * PRODUCTS_PER_REPEAT / (time.perf_counter() - start))
    by_library = {name: {"best_macs_per_s": max(r), "median_macs_per_s": float(np.median(r))}
                  for name, r in rates.items()}
    fastest = max(by_library, key=lambda name: by_library[name]["best_macs_per_s"])
    return {"macs_per_s": by_library[fastest]["best_macs_per_s"], "library": fastest,
            "by_library": by_library, "shape_mkn": [m, k, n], "dtype": "float32",
            "repeats": repeats, "products_per_repeat": PRODUCTS_PER_REPEAT,
            "torch_threads": torch.get_num_threads(), "blas_threads": _blas_threads()}


def achieved(macs_per_sample: int, step_latency_us: float, samples_per_s: float | None,
             limit_macs_per_s: float) -> dict[str, float]:
    """A runtime's multiply-accumulates per second on one stream (from its step latency)
    and batched (at the largest batch), and each as a fraction of the GEMM limit."""
    result = {"macs_per_s_batch_1": macs_per_sample * 1e6 / step_latency_us}
    if samples_per_s is not None:
        result["macs_per_s_batched"] = macs_per_sample * samples_per_s
    for key in list(result):
        result[key.replace("macs_per_s", "fraction_of_gemm_limit")] = (
            result[key] / limit_macs_per_s)
    return result
