"""One contiguous float32 buffer of weights, the form both compiled LSTM kernels read.

:mod:`bsoc.nn.kernel` and :mod:`bsoc.nn.batched` lay out the same factors differently, but
each places arrays one after another and records where each starts in its layout table.
"""

from __future__ import annotations

import numpy as np


class WeightBuffer:
    """Arrays appended as flat float32, each returning its offset in the final buffer."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._size = 0

    def place(self, array: np.ndarray) -> int:
        """Append ``array`` (row-major) and return the offset it starts at."""
        chunk = np.ascontiguousarray(array, dtype=np.float32).ravel()
        self._chunks.append(chunk)
        self._size += chunk.size
        return self._size - chunk.size

    def array(self) -> np.ndarray:
        return np.concatenate(self._chunks)
