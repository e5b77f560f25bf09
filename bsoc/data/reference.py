"""SOC from a cycler log: the charge count, and the point in the file where the cell is full.

A cycler log says how much charge moved, never how full the cell is; SOC needs one sample
where the cell is known to be full, and a count of the charge from there, forwards and
backwards. This module finds that sample in the file's own data:

* the **end of a constant-voltage (CV) charge**: charging at the charge voltage for two
  minutes or more with the current tapered to C/20 or below, which is what "full" means
  for a Li-ion cell (the standard charge of its datasheet). The rest after it keeps SOC 1,
  as no charge moves;
* else the **start of a file that opens at rest or under discharge within 50 mV of the
  charge voltage**: the rest after a CV charge that another file holds (a drive cycle
  logged after its charge). A discharge only pulls the terminal voltage down, so this
  test errs towards refusing a file, never towards calling a half-empty cell full.

A file with neither has no SOC reference: :class:`~bsoc.errors.SocReferenceError`.

The charge count is the tester's amp-hour counter where the file has one, because the
tester integrates at its own rate (a 60 s log would lose the edges of every step); a
counter that restarts from 0 at a step change is continued across the restart. When a
file is full at its start *and* at a later CV end, the count between the two should be
zero. On the LG 18650HG2 C/20 tests it is up to 0.19 Ah over 40 hours: a current offset
of 5 mA, well inside the tester's accuracy (0.1 % of its 75 A range) and invisible at 1C,
but 7 % of SOC over a slow test. Such an offset (up to C/100, and only if the count misses
by more than 1 % of Q) is removed over the loaded samples between the two points, so both
ends of a C/20 discharge+charge are at SOC 1 and its two branches describe the same cell;
the correction is recorded per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.resample import cumulative_integral
from bsoc.errors import SocReferenceError

REST_CURRENT_A = 0.005  # |I| at or below this is rest
CV_TOLERANCE_V = 0.02  # a CV charge holds the terminal voltage this close to the charge voltage
TAPER_C_RATE = 0.05  # a CV charge is finished once the current is at or below C/20
CV_MIN_S = 120.0  # ... after holding the charge voltage this long
START_MARGIN_V = 0.05  # a file "starts full" within this of the charge voltage
DRIFT_MIN_FRACTION = 0.01  # of Q: below this, two full points agree and nothing is corrected
MAX_OFFSET_C_RATE = 0.01  # a larger mean current offset is not a counter drift
# A counter restart is a step where the counter's change misses the current's integral by
# more than RESTART_MIN_AH, and the counter's new value (a count from 0) misses it by less
# than RESTART_AGREEMENT of that.
RESTART_MIN_AH = 0.01
RESTART_AGREEMENT = 0.25


@dataclass(frozen=True)
class ChargeCutoff:
    """The cell's standard charge: CV at ``voltage_v`` until the current falls to C/20 of
    ``nominal_ah``, which also scales what counts as a counter drift."""

    voltage_v: float
    nominal_ah: float

    @property
    def taper_a(self) -> float:
        return TAPER_C_RATE * self.nominal_ah


def charge_count(
    time_s: np.ndarray, current_a: np.ndarray, ah: np.ndarray | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Charge moved since the first sample (Ah, discharge negative), and how it was counted."""
    integral = cumulative_integral(time_s, current_a, time_s) / 3600.0
    if ah is None:
        return integral, {"soc_source": "trapezoidal coulomb count of current"}
    step = np.diff(ah)
    expected = np.diff(integral)
    miss = np.abs(step - expected)
    restarted = (miss > RESTART_MIN_AH) & (np.abs(ah[1:] - expected) < RESTART_AGREEMENT * miss)
    count = np.concatenate([[0.0], np.cumsum(np.where(restarted, ah[1:], step))])
    record: dict[str, Any] = {
        "soc_source": "amp-hour counter",
        "ah_counter_minus_current_integral_ah": float(count[-1] - integral[-1]),
    }
    if restarted.any():
        record["counter_restarts_continued"] = int(restarted.sum())
    return count, record


def cv_charge_ends(
    time_s: np.ndarray, current_a: np.ndarray, voltage_v: np.ndarray, cutoff: ChargeCutoff
) -> np.ndarray:
    """Positions of the last sample of every CV charge that held the charge voltage for
    CV_MIN_S and tapered to ``cutoff.taper_a``.

    The hold time tells a charge from a regeneration pulse that the tester limits at the
    charge voltage (at -20 degC such a pulse tapers below C/20 within seconds, with the
    cell not full). It is counted from the sample before the hold, so that a slow log's
    first sample at the charge voltage does not hide the minute before it.
    """
    charging = current_a > REST_CURRENT_A
    held = charging & (voltage_v >= cutoff.voltage_v - CV_TOLERANCE_V)
    positions = np.arange(len(held))
    first_held = np.maximum.accumulate(np.where(held & ~np.append(False, held[:-1]), positions, 0))
    since = time_s - time_s[np.maximum(first_held - 1, 0)]
    stops = np.append(~charging[1:], True)
    return np.flatnonzero(held & stops & (current_a <= cutoff.taper_a) & (since >= CV_MIN_S))


def starts_full(current_a: np.ndarray, voltage_v: np.ndarray, cutoff: ChargeCutoff) -> bool:
    """The first sample is at rest or discharging, within START_MARGIN_V of the charge voltage."""
    return bool(
        current_a[0] <= REST_CURRENT_A and voltage_v[0] >= cutoff.voltage_v - START_MARGIN_V
    )


def soc_from_full_point(
    time_s: np.ndarray,
    current_a: np.ndarray,
    voltage_v: np.ndarray,
    charge_ah: np.ndarray,
    capacity_ah: float,
    cutoff: ChargeCutoff,
    *,
    file: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """SOC = 1 at the file's full point (its last CV end, else its start), counted both ways.

    Returns SOC and the record of the reference (kind, position, the offset removed, and
    what the count says at the file's other full points). ``capacity_ah`` 1.0 gives the
    charge below full in Ah, which is how a C/20 test measures the capacity.
    """
    ends = cv_charge_ends(time_s, current_a, voltage_v, cutoff)
    full_start = starts_full(current_a, voltage_v, cutoff)
    if len(ends):
        anchor, kind = int(ends[-1]), "end of a CV charge"
    elif full_start:
        anchor, kind = 0, "start within 50 mV of the charge voltage (the rest after a charge)"
    else:
        raise SocReferenceError(
            f"no SOC reference: no CV charge at {cutoff.voltage_v:g} V tapers to "
            f"{cutoff.taper_a:.3g} A in it, and it does not start at rest near "
            f"{cutoff.voltage_v:g} V (it starts at {voltage_v[0]:.3f} V, {current_a[0]:+.3f} A)",
            file=file,
            remedy="ingest it with the charge that precedes it, or give SOC in a column",
        )
    record: dict[str, Any] = {
        "kind": kind,
        "position": anchor,
        "time_s": float(time_s[anchor]),
        "voltage_v": float(voltage_v[anchor]),
        "current_a": float(current_a[anchor]),
        "capacity_ah": float(capacity_ah),
    }
    charge = np.asarray(charge_ah, dtype=np.float64)
    if full_start and anchor > 0:  # full at both ends: the count between them should be 0
        record["soc_at_start_by_count"] = float(1.0 + (charge[0] - charge[anchor]) / capacity_ah)
        corrected = _without_offset(time_s, current_a, charge, anchor, cutoff.nominal_ah)
        if corrected is not None:
            charge, record["offset_removed"] = corrected
    soc = 1.0 + (charge - charge[anchor]) / capacity_ah
    if len(ends) > 1:
        record["soc_at_other_cv_ends"] = [round(float(soc[k]), 4) for k in ends[:-1]]
    return soc, record


def _without_offset(
    time_s: np.ndarray, current_a: np.ndarray, charge: np.ndarray, until: int, nominal_ah: float
) -> tuple[np.ndarray, dict[str, float]] | None:
    """The count with a constant current offset removed between two full points (0, until),
    or None when they agree already or the offset would be too large to be one."""
    missed = float(charge[until] - charge[0])
    loaded = np.abs(current_a) > REST_CURRENT_A
    loaded_s = np.concatenate([[0.0], np.cumsum(np.diff(time_s) * (loaded[1:] | loaded[:-1]))])
    span = float(loaded_s[until])
    if span <= 0 or abs(missed) <= DRIFT_MIN_FRACTION * nominal_ah:
        return None
    offset_a = missed * 3600.0 / span
    if abs(offset_a) > MAX_OFFSET_C_RATE * nominal_ah:
        return None
    correction = offset_a * np.minimum(loaded_s, span) / 3600.0
    return charge - correction, {
        "count_between_full_points_ah": missed,
        "current_offset_a": offset_a,
        "loaded_s": span,
    }
