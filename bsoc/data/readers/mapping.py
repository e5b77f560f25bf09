"""Column maps, units and sign conventions: parsed from CLI strings or a small TOML file.

A map file looks like::

    cell = "my 21700"          # optional: cell name
    capacity_ah = 4.8          # optional: nominal capacity (Ah)
    ambient_c = 25             # optional: ambient temperature (degC)
    current_sign = "charge-negative"   # optional, default "discharge-negative"

    [columns]                  # canonical name = column in the file
    time_s = "Test_Time(s)"
    voltage_v = "Voltage(V)"
    current_a = "Current(A)"
    temperature_c = "Temperature (C)_1"

    [units]                    # only what differs from s, V, A, degC, fraction, Ah
    current = "mA"

Options given on the command line win over the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data.readers.table import MAPPABLE
from bsoc.data.schema import KELVIN
from bsoc.errors import ConfigError

# quantity -> (canonical column, {unit: (scale, offset)}) with canonical = value * scale + offset
UNITS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "time": (
        "time_s",
        {"s": (1.0, 0.0), "ms": (1e-3, 0.0), "min": (60.0, 0.0), "h": (3600.0, 0.0)},
    ),
    "voltage": ("voltage_v", {"V": (1.0, 0.0), "mV": (1e-3, 0.0)}),
    "current": ("current_a", {"A": (1.0, 0.0), "mA": (1e-3, 0.0)}),
    "temperature": (
        "temperature_c",
        {"C": (1.0, 0.0), "K": (1.0, -KELVIN), "F": (5.0 / 9.0, -32.0 * 5.0 / 9.0)},
    ),
    "soc": ("soc", {"fraction": (1.0, 0.0), "percent": (0.01, 0.0)}),
    "ah": ("ah", {"Ah": (1.0, 0.0), "mAh": (1e-3, 0.0)}),
}
CURRENT_SIGNS: tuple[str, ...] = ("discharge-negative", "charge-negative")
_MAP_FILE_KEYS = {"cell", "capacity_ah", "ambient_c", "current_sign", "columns", "units"}


@dataclass
class TableSpec:
    """How to read a table: column map, units to convert, sign convention, cell facts."""

    columns: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    current_sign: str | None = None
    cell: str | None = None
    capacity_ah: float | None = None
    ambient_c: float | None = None

    def merged_over(self, base: TableSpec) -> TableSpec:
        """This spec's settings, falling back to ``base`` for anything not set here."""
        return TableSpec(
            columns={**base.columns, **self.columns},
            units={**base.units, **self.units},
            current_sign=self.current_sign or base.current_sign,
            cell=self.cell or base.cell,
            capacity_ah=self.capacity_ah if self.capacity_ah is not None else base.capacity_ah,
            ambient_c=self.ambient_c if self.ambient_c is not None else base.ambient_c,
        )


def parse_pairs(text: str | None, option: str) -> dict[str, str]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}; a malformed pair is a one-line ConfigError."""
    pairs: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"{option}: '{item.strip()}' is not NAME=VALUE", remedy=f"e.g. {option} a=b,c=d"
            )
        pairs[key.strip()] = value.strip()
    return pairs


def check_columns(columns: dict[str, str], origin: str) -> dict[str, str]:
    unknown = sorted(set(columns) - set(MAPPABLE))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown canonical column(s) {unknown}",
            remedy=f"map some of {list(MAPPABLE)} (ah = amp-hour counter)",
        )
    return columns


def check_units(units: dict[str, str], origin: str) -> dict[str, str]:
    for quantity, unit in units.items():
        if quantity not in UNITS:
            raise ConfigError(
                f"{origin}: unknown quantity '{quantity}'", remedy=f"use some of {list(UNITS)}"
            )
        if unit not in UNITS[quantity][1]:
            raise ConfigError(
                f"{origin}: unknown unit '{unit}' for {quantity}",
                remedy=f"use one of {list(UNITS[quantity][1])}",
            )
    return units


def check_sign(sign: str | None, origin: str) -> str | None:
    if sign is not None and sign not in CURRENT_SIGNS:
        raise ConfigError(f"{origin}: unknown current sign '{sign}'", remedy=f"use {CURRENT_SIGNS}")
    return sign


def load_map_file(path: Path) -> TableSpec:
    """Read a TOML map file (see the module docstring)."""
    origin = f"map file {path}"
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(
            f"cannot read {origin} ({error.strerror})", remedy="check the path"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin} is not valid TOML ({error})", remedy="fix the file") from None
    unknown = sorted(set(data) - _MAP_FILE_KEYS)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key(s) {unknown}", remedy=f"use {sorted(_MAP_FILE_KEYS)}"
        )
    for table in ("columns", "units"):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(
                f"{origin}: [{table}] must be a table", remedy="see bsoc data ingest --help"
            )
    try:
        capacity = float(data["capacity_ah"]) if "capacity_ah" in data else None
        ambient = float(data["ambient_c"]) if "ambient_c" in data else None
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: capacity_ah and ambient_c must be numbers") from None
    return TableSpec(
        columns=check_columns({k: str(v) for k, v in data.get("columns", {}).items()}, origin),
        units=check_units({k: str(v) for k, v in data.get("units", {}).items()}, origin),
        current_sign=check_sign(data.get("current_sign"), origin),
        cell=str(data["cell"]) if "cell" in data else None,
        capacity_ah=capacity,
        ambient_c=ambient,
    )


def conversions(spec: TableSpec) -> list[tuple[str, float, float, str]]:
    """The conversions a spec asks for: (column, scale, offset, description)."""
    asked = []
    for quantity, unit in spec.units.items():
        column, table = UNITS[quantity]
        scale, offset = table[unit]
        if (scale, offset) != (1.0, 0.0):
            shift = f" then {offset:+g}" if offset else ""
            asked.append(
                (
                    column,
                    scale,
                    offset,
                    f"{quantity}: {unit} -> {next(iter(table))} (x {scale:g}{shift})",
                )
            )
    if spec.current_sign == "charge-negative":
        for column in ("current_a", "ah"):
            asked.append((column, -1.0, 0.0, f"{column}: charge-negative -> discharge-negative"))
    return asked


def convert_units(columns: dict[str, np.ndarray], spec: TableSpec) -> None:
    """Apply the asked-for conversions in place to the columns present."""
    for column, scale, offset, _ in conversions(spec):
        if column in columns:
            columns[column] = columns[column] * scale + offset
