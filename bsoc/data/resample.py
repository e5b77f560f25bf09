"""Resampling a canonical cycle to a fixed rate without losing charge.

Every channel is read as the piecewise-linear curve through its samples (the same
trapezoidal model that :func:`bsoc.data.schema.coulomb_soc` and the tester's own Ah
counter use). On the output grid ``t_k = t_0 + k / rate``:

* ``current_a`` at row ``k >= 1`` is the exact time average of that curve over the
  interval ``(t_{k-1}, t_k]``. So ``sum_k I_k * dt`` equals the integral of the original
  current: a 10 Hz pulse train keeps its charge, instead of being aliased by point
  sampling (which can be off by a whole pulse per output step).
* ``voltage_v`` and ``temperature_c`` are averaged over the same intervals, not point
  sampled. An ohmic response ``V = OCV + R I`` commutes with averaging, so averaged
  voltage stays paired with averaged current; a point-sampled voltage taken during a
  pulse would be matched with the interval's mean current and look like a wrong
  resistance. For slow logs (upsampling) the interval average of the linear curve is
  plain linear interpolation at the interval midpoint.
* ``soc`` is taken at the interval *ends* ``t_k`` by linear interpolation of the input
  SOC, so ``soc_k - soc_{k-1} = I_k * dt / (3600 Q)`` whenever the input SOC is a charge
  count (exactly so where the grid meets input samples).

Row 0 has no preceding interval and carries the instantaneous values at ``t_0``. The
last partial interval (shorter than ``1 / rate``) is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bsoc.errors import ConfigError, DataValidationError

AVERAGED_COLUMNS: tuple[str, ...] = ("voltage_v", "current_a", "temperature_c")
# About 0.5 GB per cycle table; 115 days at 1 Hz. More is a wrong rate or time unit, and
# would otherwise ask numpy for terabytes.
MAX_ROWS = 10_000_000
METHOD = (
    "interval time-average of the piecewise-linear signal for voltage_v, current_a and "
    "temperature_c over (t[k-1], t[k]] (charge-conserving); soc linearly interpolated at "
    "t[k]; row 0 holds the instantaneous values at the first sample"
)


def cumulative_integral(time_s: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Exact integral from ``time_s[0]`` to each ``at`` of the linear interpolant of ``values``.

    ``at`` must lie within ``[time_s[0], time_s[-1]]``. Vectorised: O(N + M).
    """
    steps = np.diff(time_s)
    area = np.concatenate([[0.0], np.cumsum(0.5 * (values[1:] + values[:-1]) * steps)])
    segment = np.clip(np.searchsorted(time_s, at, side="right") - 1, 0, len(time_s) - 2)
    into = at - time_s[segment]
    slope = (values[segment + 1] - values[segment]) / steps[segment]
    return area[segment] + values[segment] * into + 0.5 * slope * into**2


def output_grid(start_s: float, end_s: float, rate_hz: float) -> np.ndarray:
    """Times ``start + k / rate`` up to ``end`` (the last partial interval is dropped)."""
    rows = np.floor((end_s - start_s) * rate_hz + 1e-9) + 1
    if not rows <= MAX_ROWS:
        raise DataValidationError(
            f"resampling {end_s - start_s:.6g} s at {rate_hz:g} Hz would make {rows:.3g} rows, "
            f"more than the {MAX_ROWS:,} a cycle may have",
            remedy="lower --rate, or check the time unit (e.g. --units time=ms)",
        )
    return start_s + np.arange(int(rows), dtype=np.float64) / rate_hz


def resample(frame: pd.DataFrame, rate_hz: float) -> pd.DataFrame:
    """Resample a validated canonical table to ``rate_hz`` (see the module docstring)."""
    if not np.isfinite(rate_hz) or rate_hz <= 0:
        raise ConfigError(f"rate {rate_hz} Hz must be positive", remedy="use e.g. --rate 1")
    time_s = frame["time_s"].to_numpy(dtype=np.float64)
    if len(time_s) < 2:
        return frame.reset_index(drop=True).copy()
    grid = output_grid(time_s[0], time_s[-1], rate_hz)
    out: dict[str, Any] = {"time_s": grid}
    for column in AVERAGED_COLUMNS:
        values = frame[column].to_numpy(dtype=np.float64)
        averaged = np.empty_like(grid)
        averaged[0] = values[0]
        if len(grid) > 1:
            averaged[1:] = np.diff(cumulative_integral(time_s, values, grid)) / np.diff(grid)
        out[column] = averaged
    if "soc" in frame.columns:
        out["soc"] = np.interp(grid, time_s, frame["soc"].to_numpy(dtype=np.float64))
    return pd.DataFrame(out)


def interval_charge_ah(frame: pd.DataFrame) -> float:
    """Charge of a resampled table under its own convention: ``sum_k>=1 I_k (t_k - t_{k-1})``."""
    time_s = frame["time_s"].to_numpy(dtype=np.float64)
    current = frame["current_a"].to_numpy(dtype=np.float64)
    return float(np.sum(current[1:] * np.diff(time_s)) / 3600.0)
