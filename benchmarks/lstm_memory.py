"""How far back does a trained LSTM's SOC depend on its inputs? Its effective memory.

An LSTM run from a cycle's first sample could in principle count the charge moved over
hours; whether a trained one does is an empirical question. This script answers it per
test cycle: at every ``stride``-th sample ``e`` it restarts the network from a zero state
``W`` samples earlier and compares its output at ``e`` with the output of the run from
the first sample. Where the two agree, nothing older than ``W`` samples reaches the
estimate: the network reads SOC from the last ``W`` samples (voltage, current and
temperature) and cannot integrate current beyond them. The memory is the smallest ``W``
whose largest difference over all cycles stays below ``--tolerance`` points.

    .venv/bin/python benchmarks/lstm_memory.py models/RUN/lstm --data data/panasonic \\
        --out reports/RUN/lstm-memory.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.bench.machine import machine_info
from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator

WINDOWS = (30, 100, 300, 1000, 3000)
STRIDE = 60
TOLERANCE_PCT = 0.1


def restart_differences(lstm: LstmSocEstimator, samples: np.ndarray, window: int,
                        stride: int = STRIDE, full: np.ndarray | None = None) -> np.ndarray:
    """|SOC from the first sample - SOC restarted ``window`` samples earlier| in points, at
    the ends ``window, window + stride, ...`` (sample counts) of ``samples``; empty when
    the cycle is shorter than ``window``. ``full``: the run from the first sample, if
    already computed (one run serves every window)."""
    ends = np.arange(window, len(samples) + 1, stride)
    if len(ends) == 0:
        return np.zeros(0)
    full = lstm.predict(samples) if full is None else full
    restarted = lstm.predict_many([samples[end - window:end] for end in ends])
    return 100 * np.abs(np.array([r[-1] for r in restarted]) - full[ends - 1])


def memory_samples(largest_pct: dict[int, float], tolerance_pct: float) -> int | None:
    """The smallest window whose largest difference stays below the tolerance (None: even
    the longest window measured is not enough)."""
    return next((w for w in sorted(largest_pct) if largest_pct[w] < tolerance_pct), None)


def measure(lstm: LstmSocEstimator, cycles: Sequence[Any], windows: Sequence[int],
            stride: int) -> list[dict[str, Any]]:
    """Per cycle and window: the largest and the RMS difference, and the points compared."""
    rows = []
    for cycle in cycles:
        samples = cycle.samples()
        full = lstm.predict(samples)
        for window in windows:
            diff = restart_differences(lstm, samples, window, stride, full)
            if len(diff):
                rows.append({"cycle": cycle.meta.name, "temperature_c": cycle.meta.ambient_c,
                             "window_samples": window, "points": len(diff),
                             "largest_pct": float(diff.max()),
                             "rms_pct": float(np.sqrt(np.mean(diff**2)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an LSTM model folder (any LSTM kind)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS))
    parser.add_argument("--stride", type=int, default=STRIDE)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_PCT,
                        help="points of SOC below which two outputs count as the same")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    lstm = load_estimator(args.model)
    if not isinstance(lstm, LstmSocEstimator):
        raise SystemExit(f"{args.model} holds a {lstm.kind!r} model, not an LSTM")
    rows = measure(lstm, Dataset.load(args.data).split(args.split), args.windows, args.stride)
    largest = {w: max(r["largest_pct"] for r in rows if r["window_samples"] == w)
               for w in args.windows if any(r["window_samples"] == w for r in rows)}
    memory = memory_samples(largest, args.tolerance)
    print(f"{args.model} on the {args.split} split: restarted W samples earlier, the SOC "
          "differs from the run from the first sample by (largest / RMS over all cycles)")
    for window, value in largest.items():
        rms = np.sqrt(np.mean([r["rms_pct"] ** 2 for r in rows if r["window_samples"] == window]))
        print(f"  W = {window:>5}: {value:.3f} / {rms:.3f} points")
    print(f"memory: {memory if memory is not None else 'more than the longest window'} "
          f"samples (largest difference below {args.tolerance:g} points)")
    result = {"model": str(args.model), "data": str(args.data), "split": args.split,
              "stride": args.stride, "tolerance_pct": args.tolerance,
              "largest_pct": {str(w): v for w, v in largest.items()},
              "memory_samples": memory, "cycles": rows, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
