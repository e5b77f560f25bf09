"""Keep Python's cyclic garbage collector from pausing latency-sensitive loops.

Used by the service and by the replay client (whose own pauses would otherwise be
counted as service latency).
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Freeze everything alive now and make the remaining collections rare.

    A full collection walks every tracked object: after importing torch and loading a
    model that is about 250k objects and 100 ms here, during which every request waits.
    Frozen objects (libraries, the model, restored streams: they live as long as the
    process) are never walked again. The larger first threshold makes young collections,
    and the full ones they lead to, rare; garbage without reference cycles is freed by
    reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
