"""The canonical cycle table and its validation.

Every entry point (ingest, simulate, load, the service) passes data through
:func:`validate_frame`, so a model never sees a table that breaks these rules:

* columns ``time_s, voltage_v, current_a, temperature_c, soc`` (+ optional ``capacity_ah``),
* seconds, volts, amperes (discharge negative), degrees Celsius, SOC as a fraction 0..1,
* finite numbers, strictly increasing time.

Errors name the file, the first offending row and the column, and say how to fix it.
Nothing is silently repaired: conversions happen only in readers, when asked, and are
recorded in the dataset manifest.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bsoc.data.resample import cumulative_integral
from bsoc.errors import DataValidationError
from bsoc.estimator import SAMPLE_FIELDS

REQUIRED_COLUMNS: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c", "soc")
OPTIONAL_COLUMNS: tuple[str, ...] = ("capacity_ah",)
FEATURE_COLUMNS: tuple[str, ...] = ("voltage_v", "current_a", "temperature_c")
SPLITS: tuple[str, ...] = ("train", "val", "test")
OCV_LOAD_KIND = "ocv"  # the load kind of slow (C/20) tests, which the EKF reads OCV(SOC) off
KELVIN = 273.15  # 0 degC in kelvin

# Physical plausibility limits for a single Li-ion cell. Values outside them are
# almost always a unit mistake (mV, mA, kelvin, percent), which we name explicitly.
VOLTAGE_RANGE_V = (0.5, 5.0)
TEMPERATURE_RANGE_C = (-60.0, 100.0)
MAX_CURRENT_C_RATE = 40.0  # |I| above 40 C for the nominal capacity means "not amperes"
# Sustained current: a power cell's pulses reach 10-30 C for seconds, but 20 C held for a
# minute empties a third of the cell; the real Panasonic/LG drive cycles stay below 2.3 C
# over any minute. Above it, milliamperes were read as amperes, or the capacity is wrong.
MAX_SUSTAINED_C_RATE = 20.0
SUSTAINED_WINDOW_S = 60.0
MIN_SAMPLES = 2  # a cycle needs at least one interval to have a duration and a charge


@dataclass
class CycleMeta:
    """What a cycle is: enough to reproduce where it came from and how to use it."""

    name: str
    cell: str
    nominal_capacity_ah: float
    ambient_c: float
    split: str = "train"
    capacity_ah: float | None = None  # measured capacity used for SOC, if known
    source_file: str | None = None
    # kind of load: ocv, capacity, cc, pulse, hppc, charge, a drive cycle (udds, la92,
    # hwfet, us06, nn, urban, highway, aggressive) or mixed; None if unknown
    load_kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CycleMeta:
        """Metadata as :meth:`to_dict` wrote it, or as a format-1 manifest did (which called
        the load kind ``profile``)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "load_kind" not in known and "profile" in data:
            known["load_kind"] = data["profile"]
        return cls(**known)


@dataclass
class Cycle:
    """One cycle: a canonical table plus its metadata."""

    frame: pd.DataFrame
    meta: CycleMeta

    @property
    def duration_s(self) -> float:
        return float(self.frame["time_s"].iloc[-1] - self.frame["time_s"].iloc[0])

    def features(self) -> np.ndarray:
        """(T, 3) float32 array of voltage, current, temperature in the canonical order."""
        return self.frame[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)

    def samples(self) -> np.ndarray:
        """(T, 4) float64 rows of ``SAMPLE_FIELDS``: what an estimator is fed, sample by sample."""
        return self.frame[list(SAMPLE_FIELDS)].to_numpy(dtype=np.float64)

    def soc(self) -> np.ndarray:
        return self.frame["soc"].to_numpy(dtype=np.float64)


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_frame(
    frame: pd.DataFrame,
    *,
    file: str | None = None,
    nominal_capacity_ah: float | None = None,
    require_soc: bool = True,
) -> pd.DataFrame:
    """Check a table against the canonical schema and return it with canonical column order.

    Raises :class:`DataValidationError` for the first problem found, naming file, row
    (0-based data row) and column. ``nominal_capacity_ah`` sharpens the ampere/milliampere
    check; ``require_soc=False`` accepts tables whose SOC is still to be derived.
    """
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise DataValidationError(
            "the table is empty", file=file, remedy="check the file holds samples"
        )
    if len(frame) < MIN_SAMPLES:
        raise DataValidationError(
            f"the table has only {len(frame)} sample(s); a cycle needs at least {MIN_SAMPLES}",
            file=file, remedy="check the file holds the whole cycle",
        )
    required = [c for c in REQUIRED_COLUMNS if require_soc or c != "soc"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        column = missing[0]
        near = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
        hint = f" (found '{near[0]}': rename it or pass a column map)" if near else ""
        raise DataValidationError(
            f"required column is missing{hint}; columns present: {list(frame.columns)}",
            file=file,
            column=column,
            remedy=f"provide columns {list(required)}",
        )
    present = [c for c in (*required, *OPTIONAL_COLUMNS) if c in frame.columns]
    repeated = [c for c in present if int((frame.columns == c).sum()) > 1]
    if repeated:
        raise DataValidationError(
            "column appears more than once",
            file=file,
            column=repeated[0],
            remedy="keep one column of each name (check the column map)",
        )
    out = pd.DataFrame({column: numeric_column(frame[column], column, file) for column in present})
    _check_time(out["time_s"].to_numpy(), file)
    _check_units(out, file, nominal_capacity_ah)
    if "soc" in out.columns:
        _check_soc(out, file)
    return out.reset_index(drop=True)


def numeric_column(series: pd.Series, column: str, file: str | None) -> np.ndarray:
    """The column as float64, or an error at the first (positional) row that is not a finite
    number. Public so that readers can check source columns before converting units."""
    if pd.api.types.is_bool_dtype(series) or _holds_booleans(series):
        raise DataValidationError(
            "the column holds booleans (True/False), not measured values",
            file=file, column=column, remedy="map the column that holds the measurement",
        )
    if pd.api.types.is_numeric_dtype(series):
        converted = series
    else:
        try:
            converted = pd.to_numeric(series, errors="coerce")
        except (TypeError, ValueError):  # containers or other objects inside the column
            converted = pd.Series([_as_float(value) for value in series])
    values = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        row = _first_row(~finite)
        original = series.iloc[row]
        if _is_missing(original) or np.isinf(values[row]):
            message, remedy = (
                f"value {values[row]} is not finite (NaN or inf)",
                "remove or interpolate missing samples before ingesting",
            )
        else:
            message, remedy = f"value {original!r} is not a number", _number_remedy(original)
        raise DataValidationError(message, file=file, row=row, column=column, remedy=remedy)
    return values


def _holds_booleans(series: pd.Series) -> bool:
    """True/False in a column of objects or text (a CSV read as text, a Parquet object column)."""
    if series.dtype != object and not pd.api.types.is_string_dtype(series):
        return False
    head = series.dropna().head(100)
    words = {"true", "false"}
    return len(head) > 0 and all(
        isinstance(value, bool | np.bool_) or str(value).strip().lower() in words for value in head
    )


def _number_remedy(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+,\d+\s*", value):
        return "the file uses decimal commas: write decimal points (e.g. 3.71, not 3,71)"
    return "fix or remove the row"


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like cells are not "missing", they are wrong
        return False


def _check_time(time_s: np.ndarray, file: str | None) -> None:
    steps = np.diff(time_s)
    bad = steps <= 0
    if bad.any():
        row = _first_row(bad) + 1
        duplicated = steps[row - 1] == 0
        raise DataValidationError(
            f"time {'duplicated' if duplicated else 'goes backwards'} ({time_s[row - 1]} s then "
            f"{time_s[row]} s); time must strictly increase",
            file=file,
            row=row,
            column="time_s",
            remedy="drop the duplicates (ingest: --duplicate-times keep-last keeps the last "
            "record of each time, as testers mean their step-end records)" if duplicated
            else "sort the samples by time",
        )


def _check_units(out: pd.DataFrame, file: str | None, nominal_capacity_ah: float | None) -> None:
    voltage = out["voltage_v"].to_numpy()
    high = voltage > VOLTAGE_RANGE_V[1]
    if high.any():
        row = _first_row(high)
        unit = " (looks like millivolts)" if voltage[row] > 500 else ""
        raise DataValidationError(
            f"voltage {voltage[row]} V is above {VOLTAGE_RANGE_V[1]} V for one cell{unit}",
            file=file,
            row=row,
            column="voltage_v",
            remedy="give volts of a single cell (scale mV by 1e-3 with a unit option)",
        )
    low = voltage < VOLTAGE_RANGE_V[0]
    if low.any():
        row = _first_row(low)
        raise DataValidationError(
            f"voltage {voltage[row]} V is below {VOLTAGE_RANGE_V[0]} V: not a live cell voltage",
            file=file,
            row=row,
            column="voltage_v",
            remedy="check the voltage column and its unit",
        )
    current = np.abs(out["current_a"].to_numpy())
    capacity = nominal_capacity_ah or 5.0
    limit = MAX_CURRENT_C_RATE * capacity
    big = current > limit
    if big.any():
        row = _first_row(big)
        raise DataValidationError(
            f"|current| {current[row]:.1f} A exceeds {limit:.0f} A (looks like milliamperes)",
            file=file,
            row=row,
            column="current_a",
            remedy="give amperes (scale mA by 1e-3 with a unit option)",
        )
    _check_sustained_current(out["time_s"].to_numpy(), current, capacity, file)
    temperature = out["temperature_c"].to_numpy()
    outside = (temperature < TEMPERATURE_RANGE_C[0]) | (temperature > TEMPERATURE_RANGE_C[1])
    if outside.any():
        row = _first_row(outside)
        unit = " (looks like kelvin)" if 200 < temperature[row] < 400 else ""
        raise DataValidationError(
            f"temperature {temperature[row]} degC is outside {TEMPERATURE_RANGE_C}{unit}",
            file=file,
            row=row,
            column="temperature_c",
            remedy="give degrees Celsius (subtract 273.15 from kelvin with a unit option)",
        )


def _check_sustained_current(
    time_s: np.ndarray, current: np.ndarray, capacity: float, file: str | None
) -> None:
    """Mean |current| over every window of SUSTAINED_WINDOW_S (the whole table if shorter)."""
    charge = cumulative_integral(time_s, current, time_s)
    span = time_s[-1] - time_s[0]
    window = min(SUSTAINED_WINDOW_S, span)
    if window <= 0:
        return
    ends = time_s >= time_s[0] + window
    mean = (charge[ends] - np.interp(time_s[ends] - window, time_s, charge)) / window
    worst = int(np.argmax(mean))
    rate = mean[worst] / capacity
    if rate > MAX_SUSTAINED_C_RATE:
        raise DataValidationError(
            f"|current| averages {mean[worst]:.1f} A = {rate:.0f} C over {window:g} s for a "
            f"{capacity:g} Ah cell; above {MAX_SUSTAINED_C_RATE:g} C held that long is not "
            "plausible (milliamperes read as amperes, or the wrong capacity)",
            file=file,
            row=int(np.flatnonzero(ends)[worst]),
            column="current_a",
            remedy="give amperes (--units current=mA converts) and the cell's capacity",
        )


def _check_soc(out: pd.DataFrame, file: str | None) -> None:
    soc = out["soc"].to_numpy()
    outside = (soc < 0.0) | (soc > 1.0)
    if outside.any():
        row = _first_row(outside)
        unit = " (looks like percent)" if soc.max() > 1.5 else ""
        raise DataValidationError(
            f"SOC {soc[row]} is outside [0, 1]{unit}",
            file=file,
            row=row,
            column="soc",
            remedy="give SOC as a fraction 0..1",
        )
    _check_sign_convention(out, file)


def _check_sign_convention(out: pd.DataFrame, file: str | None) -> None:
    """SOC must fall when current is negative: catch tables with charge-negative current.

    Compares the SOC change with the coulomb count over the segments where the table's
    own SOC moves by more than 2 %; a clearly opposite sign means the current is flipped.
    """
    time_s = out["time_s"].to_numpy()
    current = out["current_a"].to_numpy()
    soc = out["soc"].to_numpy()
    charge_ah = np.concatenate([[0.0], np.cumsum(current[:-1] * np.diff(time_s))]) / 3600.0
    d_soc = soc - soc[0]
    d_ah = charge_ah - charge_ah[0]
    moving = np.abs(d_soc) > 0.02
    if moving.sum() < 10:
        return
    agreement = np.sign(d_soc[moving]) == np.sign(d_ah[moving])
    if agreement.mean() < 0.2:
        row = _first_row(moving)
        raise DataValidationError(
            "SOC rises while the current is negative: the current sign looks flipped "
            "(bsoc uses discharge negative)",
            file=file,
            row=row,
            column="current_a",
            remedy="negate the current (e.g. --current-sign charge-negative when ingesting)",
        )


def coulomb_soc(
    time_s: np.ndarray, current_a: np.ndarray, capacity_ah: float, soc0: float = 1.0
) -> np.ndarray:
    """SOC by trapezoidal coulomb counting from a known starting point (discharge negative)."""
    if capacity_ah <= 0:
        raise DataValidationError(
            f"capacity {capacity_ah} Ah must be positive", remedy="give the cell's capacity in Ah"
        )
    increments = 0.5 * (current_a[1:] + current_a[:-1]) * np.diff(time_s)
    return soc0 + np.concatenate([[0.0], np.cumsum(increments)]) / (3600.0 * capacity_ah)
