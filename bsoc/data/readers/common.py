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

from bsoc.data.schema import OCV_LOAD_KIND
from bsoc.errors import DataValidationError

# How SOC is anchored when the file has no SOC column:
#   "full-at-start": the file starts fully charged, SOC = 1 + dAh / Q (Q = given capacity);
#   "own-capacity":  the file runs from full to empty (a slow capacity/OCV test), so Q is
#                    the charge it delivers from its start to its deepest point;
#   "full-point":    SOC 1 where the file's own data shows the cell full (the end of a CV
#                    charge at ``charge_voltage_v``, or a start at rest near it), counted
#                    forwards and backwards from there (:mod:`bsoc.data.reference`).
SOC_BASES: tuple[str, ...] = ("full-at-start", "own-capacity", "full-point")


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
    load_kind: str | None
    soc_basis: str = "full-at-start"
    charge_voltage_v: float | None = None  # the CV charge voltage, for the "full-point" basis
    extra: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


_AMBIENT = re.compile(r"(?<![A-Za-z0-9.])([n-]?)(\d+(?:\.\d+)?) ?d(?:eg)?C(?![a-z])")

# The load kind of a cycle from its name; the first pattern that matches wins.
# ocv: slow (C/20) discharge/charge tests; capacity: 1C capacity tests; cc: other
# constant-current discharges; pulse: pulse cycles with rests; charge: the charges between
# tests; then each drive cycle, and mixed drive cycles.
_LOAD_KINDS: tuple[tuple[str, str], ...] = (
    (OCV_LOAD_KIND, r"OCV|C20"),
    ("hppc", r"HPPC"),
    ("capacity", r"Dis1C|Cap_?\d*C|Capacity"),
    ("cc", r"Dis_\d|(?<![A-Za-z0-9])\d*C_?(dis)?charge|(^|_)CC(_|$)"),
    ("pulse", r"PausCycl|Puls"),
    ("charge", r"(^|_)Charge\d*(_|$)"),
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


def load_kind_from_name(name: str) -> str | None:
    """Kind of load from the cycle name (ocv, capacity, pulse, hppc, charge, udds, mixed...)."""
    for kind, pattern in _LOAD_KINDS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return kind
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
    """Seconds from numbers, 'H:MM:SS.sss' durations, time deltas or date-times.

    Text is read as whatever most of its cells are (numbers, durations, else date-times),
    so one odd cell is reported at its own row rather than turning the column into
    something else. Date-times become seconds since the first sample. An unparseable cell
    is an error naming its row (the series index holds source rows).
    """
    if pd.api.types.is_bool_dtype(series):
        raise DataValidationError(
            "time holds booleans (True/False), not seconds", file=file, column=column,
            remedy="map the column that holds the time",
        )
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_timedelta64_dtype(series):
        values = series.dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = _text_time(series.astype("string").str.strip())
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


def _text_time(text: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().mean() > 0.5:
        return numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    is_duration = text.str.fullmatch(r"\d+(:\d+){1,2}(\.\d*)?").fillna(False).astype(bool)
    if is_duration.mean() > 0.5:
        parts = text.str.split(":", expand=True)
        seconds = pd.Series(0.0, index=text.index)
        for position in range(parts.shape[1]):
            part = pd.to_numeric(parts[position], errors="coerce")
            seconds = seconds * 60.0 + part
        return seconds.where(is_duration).to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        stamps = pd.to_datetime(text, errors="coerce", format="mixed")
    except (TypeError, ValueError, OverflowError):  # e.g. mixed time zones: reported per row
        stamps = pd.Series(pd.NaT, index=text.index)
    first = stamps.dropna()
    origin = first.iloc[0] if len(first) else pd.Timestamp(0)
    return (stamps - origin).dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan)


def read_bytes(path: Path) -> bytes:
    """The whole file; one the system will not give us (permissions, a vanished file) is a
    one-line error naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise access_error(path, error) from None


def access_error(path: Path, error: OSError) -> DataValidationError:
    return DataValidationError(
        f"cannot read the file ({error.strerror or error})",
        file=str(path),
        remedy="check that it exists and that you may read it",
    )


def unreadable(kind: str, file: str, error: Exception, remedy: str) -> DataValidationError:
    """A file its parser rejects. Parsers of damaged bytes raise many exception types; all
    of them mean the same to the user, so the message keeps the parser's first line."""
    text = str(error).strip()
    message = text.splitlines()[0] if text else type(error).__name__
    return DataValidationError(f"cannot read as {kind} ({message})", file=file, remedy=remedy)


def clean_names(names: list[object]) -> list[str]:
    """Header names without surrounding spaces or the UTF-8 byte-order mark that Excel and
    many Windows tools write before the first name."""
    return ["" if _is_blank(name) else str(name).replace("\ufeff", "").strip() for name in names]


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def require_unique(names: list[str], wanted: list[str], *, file: str) -> None:
    """Two columns with a name we read would make the choice between them arbitrary."""
    for name in wanted:
        positions = [number for number, present in enumerate(names, start=1) if present == name]
        if len(positions) > 1:
            raise DataValidationError(
                f"columns {positions[0]} and {positions[1]} (counting from 1) are both named "
                f"'{name}', so which one holds the data is ambiguous",
                file=file,
                column=name,
                remedy="rename or drop one of them",
            )


def reject_repeated_header(table: pd.DataFrame, columns: list[str], *, file: str) -> None:
    """A header line inside the data (files appended to each other) named at its own row,
    instead of as a cell that is "not a number"."""
    if not len(table) or not columns:
        return
    repeats = np.ones(len(table), dtype=bool)
    for column in columns:
        repeats &= (table[column].astype("string").str.strip() == column).fillna(False).to_numpy()
    if repeats.any():
        raise DataValidationError(
            "the header line repeats here (were files appended to each other?)",
            file=file,
            row=int(table.index[int(np.flatnonzero(repeats)[0])]),
            remedy="remove the repeated header lines, or ingest each part as its own file",
        )


def require_columns(names: list[str], columns: list[str], *, file: str, remedy: str) -> None:
    """Error naming the first missing source column, with the nearest name present."""
    for column in columns:
        if column not in names:
            near = difflib.get_close_matches(column, names, n=1)
            hint = f" (nearest present: '{near[0]}')" if near else ""
            raise DataValidationError(
                f"column is missing{hint}; columns present: {names[:20]}",
                file=file,
                column=column,
                remedy=remedy,
            )
