"""SOC of an ingested cycle: counted from a known full point, or the file's own SOC checked.

Without a SOC column, SOC is the charge count (:mod:`bsoc.data.reference`) anchored where
the reader says the cell is full (``RawCycle.soc_basis``); a small overshoot above 1 is
clipped and counted, a larger one is an error. A SOC column given in the file is compared
with the coulomb count: a gross disagreement is a unit mistake (an error), a moderate one a
note.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bsoc.data.readers.common import RawCycle
from bsoc.data.reference import ChargeCutoff, charge_count, soc_from_full_point
from bsoc.data.resample import cumulative_integral
from bsoc.errors import DataValidationError, SocReferenceError

SOC_OVERSHOOT_LIMIT = 0.02  # above 1 + this, the reference is wrong: an error, not a clip
ROUNDING = 1e-9
CLIP_NOTED = 1e-4  # SOC above 1 by less is the counter's last digit: clipped, not counted
# A SOC column is compared with the coulomb count once it moves by SOC_CHECK_MIN_CHANGE;
# the fitted ratio (count / column) beyond SOC_RATIO_ERROR either way is a unit or sign
# mistake (ms, mA and minutes are factors of 60 to 3600), beyond SOC_RATIO_NOTE a note.
SOC_CHECK_MIN_CHANGE = 0.02
SOC_RATIO_ERROR = 3.0
SOC_RATIO_NOTE = 1.25
_UNIT_MISTAKES: tuple[tuple[float, str], ...] = (
    (1000.0, "time in milliseconds (--units time=ms) or current in mA (--units current=mA)"),
    (1 / 60, "time in minutes (--units time=min)"),
    (1 / 3600, "time in hours (--units time=h)"),
    (-1.0, "a flipped current sign (--current-sign charge-negative)"),
)


def derive_soc(
    frame: pd.DataFrame, ah: np.ndarray | None, capacity: float, raw: RawCycle, rows: np.ndarray
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """SOC from the charge count, anchored as ``raw.soc_basis`` says; (soc, Q used, record)."""
    time_s, current = frame["time_s"].to_numpy(), frame["current_a"].to_numpy()
    charge, record = charge_count(time_s, current, ah)
    record["soc_basis"] = raw.soc_basis
    if raw.soc_basis == "full-point":
        cutoff = ChargeCutoff(float(raw.charge_voltage_v or 0.0),
                              float(raw.nominal_capacity_ah or capacity))
        soc, reference = soc_from_full_point(
            time_s, current, frame["voltage_v"].to_numpy(), charge, capacity, cutoff,
            file=raw.source_file,
        )
        reference["row"] = int(rows[reference.pop("position")])
    else:
        if raw.soc_basis == "own-capacity":
            capacity = float(charge[0] - charge.min())
            if capacity <= 0:
                raise SocReferenceError(
                    "the cycle delivers no charge, so its own capacity is undefined",
                    file=raw.source_file,
                    remedy="ingest it as a drive cycle or give SOC",
                )
            kind = "full at the first sample, empty at its deepest discharge (own capacity)"
        else:
            kind = "full at the first sample (the layout's cycles start from a full charge)"
        soc = 1.0 + charge / capacity
        reference = {"kind": kind, "row": int(rows[0]), "capacity_ah": capacity}
    record["soc_reference"] = reference
    return soc, capacity, record


def bound_soc(soc: np.ndarray, raw: RawCycle, rows: np.ndarray, capacity: float) -> np.ndarray:
    over = soc > 1.0 + SOC_OVERSHOOT_LIMIT
    if over.any():
        row = int(np.flatnonzero(over)[0])
        anchor = (
            "its full point: the cell is not full there" if raw.soc_basis == "full-point"
            else "the start: the cycle does not start full"
        )
        raise SocReferenceError(
            f"the charge count rises {(soc[row] - 1) * capacity:.3f} Ah above {anchor}, or "
            "the current sign is flipped",
            file=raw.source_file,
            row=int(rows[row]),
            column=raw.sources.get("current_a", "current_a"),
            remedy="check --current-sign, or give SOC in the file",
        )
    under = soc < -ROUNDING
    if under.any():
        row = int(np.flatnonzero(under)[0])
        raise DataValidationError(
            f"SOC falls to {soc[row]:.3f}: more than the capacity {capacity:g} Ah was discharged",
            file=raw.source_file,
            row=int(rows[row]),
            column="soc",
            remedy="pass the cell's measured capacity with --capacity, or check the time and "
            "current units (--units time=ms, current=mA)",
        )
    clipped = soc > 1.0 + CLIP_NOTED
    raw.extra["soc_clipped_above_1"] = int(clipped.sum())
    if clipped.any():
        raw.extra["soc_max_before_clip"] = float(soc.max())
    return np.clip(soc, 0.0, 1.0)


def _likely_mistake(ratio: float) -> str:
    for factor, mistake in _UNIT_MISTAKES:
        if ratio * factor > 0 and abs(np.log(ratio / factor)) < np.log(1.5):
            return f"this looks like {mistake}; "
    return ""


def check_given_soc(frame: pd.DataFrame, raw: RawCycle, capacity: float) -> str | None:
    """Compare the file's SOC with the coulomb count: an error, a note, or nothing.

    ``ratio`` is the least-squares factor between the count's and the column's change
    from the first sample, so noise or a SOC estimator's small corrections average out.
    """
    soc = frame["soc"].to_numpy()
    given = soc - soc[0]
    if np.ptp(given) < SOC_CHECK_MIN_CHANGE:
        return None
    time_s = frame["time_s"].to_numpy()
    counted = cumulative_integral(time_s, frame["current_a"].to_numpy(), time_s) / 3600.0
    ratio = float(np.dot(counted / capacity, given) / np.dot(given, given))
    raw.extra["coulomb_count_to_soc_ratio"] = ratio
    implied = f"the SOC column implies Q = {capacity * ratio:.4g} Ah, not {capacity:g}"
    if not 1 / SOC_RATIO_ERROR <= ratio <= SOC_RATIO_ERROR:
        raise DataValidationError(
            f"the coulomb count of the current moves SOC {ratio:.4g} times as much as the SOC "
            f"column ({implied})",
            file=raw.source_file,
            column=raw.sources.get("soc", "soc"),
            remedy=f"{_likely_mistake(ratio)}check the time and current units, the current "
            "sign and --capacity",
        )
    if not 1 / SOC_RATIO_NOTE <= ratio <= SOC_RATIO_NOTE:
        return (f"{raw.name}: the coulomb count moves SOC {ratio:.3f} times as much as the SOC "
                f"column ({implied}); the SOC column is used")
    return None
