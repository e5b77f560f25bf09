"""What every reader returns, and the small parsing rules readers share.

A reader turns one source file into :class:`RawCycle` objects: canonical column names,
but still in the file's own units and sign, at the file's own rate, with the pandas
index holding the *source* row numbers so later errors can point into the file. Unit
conversion, SOC derivation, trimming and resampling happen afterwards, the same way for
every format (:mod:`bsoc.data.ingest`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bsoc.errors import DataValidationError

# How SOC is anchored when the file has no SOC column:
#   "full-at-start": the file starts fully charged, SOC = 1 + dAh / Q (Q = given capacity);
#   "own-capacity":  the file runs from full to empty (a slow capacity/OCV test), so Q is
#                    the charge it delivers from its start to its deepest point.
SOC_BASES: tuple[str, ...] = ("full-at-start", "own-capacity")


@dataclass
class RawCycle:
    """One cycle as read: canonical names, source units, source rows in the index.

    ``frame`` holds ``time_s, voltage_v, current_a, temperature_c`` and optionally
    ``soc`` (given by the file) and/or ``ah`` (an amp-hour counter, discharge negative).
    Values may still be text: they are checked, with source rows, by the ingest step.
    ``sources`` maps canonical names to the file's column names, for error messages.
    """

    frame: pd.DataFrame
    name: str
    source_file: str
    cell: str
    nominal_capacity_ah: float | None
    ambient_c: float | None
    profile: str | None
    soc_basis: str = "full-at-start"
    extra: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


_AMBIENT = re.compile(r"(?<![A-Za-z0-9.])([n-]?)(\d+(?:\.\d+)?) ?d(?:eg)?C(?![a-z])")

# Ordered: the first pattern that matches the cycle name gives its profile.
_PROFILES: tuple[tuple[str, str], ...] = (
    ("ocv", r"OCV|C20"),
    ("cc", r"Dis1C|(?<![A-Za-z0-9])\d*C_?(dis)?charge|(^|_)CC(_|$)"),
    ("hppc", r"HPPC"),
    ("us06", r"US06"),
    ("udds", r"UDDS"),
    ("la92", r"LA92"),
    ("hwfet", r"HWF(E)?T"),
    ("nn", r"(^|_)NN(_|$)"),
    ("mixed", r"Cycle_\d|Mixed"),
)


def ambient_from_path(path: Path) -> float | None:
    """Ambient temperature written in the file or folder name: '25degC', 'n10degC' = -10."""
    for part in (path.stem, *(p.name for p in path.parents)):
        match = _AMBIENT.search(part)
        if match:
            value = float(match.group(2))
            return -value if match.group(1) else value
    return None


def profile_from_name(name: str) -> str | None:
    """Kind of load from the cycle name (udds, la92, hwfet, us06, nn, mixed, cc, ocv...)."""
    for profile, pattern in _PROFILES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return profile
    return None


def drop_repeated_times(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the last record of each run of equal timestamps (a tester's step-end record).

    Testers such as the Digatron write a second record with the same time stamp when a
    step ends; the later one is the state at that instant. Only exact repeats are
    dropped: time that goes backwards is left for validation to report.
    """
    time_s = pd.to_numeric(frame["time_s"], errors="coerce").to_numpy()
    repeated = np.zeros(len(frame), dtype=bool)
    repeated[:-1] = time_s[1:] == time_s[:-1]
    return frame[~repeated], int(repeated.sum())


def parse_time(series: pd.Series, *, file: str, column: str) -> np.ndarray:
    """Seconds from numbers, 'H:MM:SS.sss' durations or date-time strings.

    Date-times become seconds since the first sample. An unparseable cell is an error
    naming its row (the series index holds source rows).
    """
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    text = series.astype("string").str.strip()
    is_duration = text.str.fullmatch(r"\d+(:\d+){1,2}(\.\d*)?").fillna(False)
    if is_duration.mean() > 0.5:
        parts = text.str.split(":", expand=True)
        seconds = pd.Series(0.0, index=series.index)
        for position in range(parts.shape[1]):
            part = pd.to_numeric(parts[position], errors="coerce")
            seconds = seconds * 60.0 + part
        values = seconds.where(is_duration).to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            stamps = pd.to_datetime(text, errors="coerce", format="mixed")
        except (TypeError, ValueError):  # e.g. mixed time zones: reported per row below
            stamps = pd.Series(pd.NaT, index=series.index)
        first = stamps.dropna()
        origin = first.iloc[0] if len(first) else pd.Timestamp(0)
        values = (stamps - origin).dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"time {series.iloc[row]!r} is not seconds, a duration or a date-time",
            file=file,
            row=int(series.index[row]),
            column=column,
            remedy="give time in seconds, 'H:MM:SS' or a date-time in every row",
        )
    return values


def require_columns(frame: pd.DataFrame, columns: list[str], *, file: str, remedy: str) -> None:
    """Error naming the first missing source column, with the nearest name present."""
    for column in columns:
        if column not in frame.columns:
            near = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
            hint = f" (nearest present: '{near[0]}')" if near else ""
            raise DataValidationError(
                f"column is missing{hint}; columns present: {list(frame.columns)[:20]}",
                file=file,
                column=column,
                remedy=remedy,
            )
