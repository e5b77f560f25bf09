"""Reader for the LG 18650HG2 CSV layout (Kollmeyer et al., McMaster University).

Each file has a ``key,value`` metadata block (Measurement ID, Test section, Maximum
Voltage, Nominal Capacity, ...), then a header line starting ``Time Stamp,Step,Status,
Prog Time,Step Time,Cycle,Cycle Level,Procedure,Voltage,Current,Temperature,Capacity,
WhAccu,Cnt``, often followed by a line of units. ``Prog Time`` (H:MM:SS.sss since the
program started, hours past 24) gives time; ``Capacity`` is the tester's amp-hour counter
(it restarts from 0 at some step changes); current is discharge negative and the
temperature is in degrees Celsius.

A file is one test section of a longer program: few start full (a C/20 test is a
discharge then a charge back to full, a charge file starts empty), so SOC is anchored at
the file's own full point (basis "full-point", :mod:`bsoc.data.reference`) with the
metadata's maximum voltage as the CV charge voltage. Records with status ``STO`` are the
tester stopping (their values are not measurements: some read 0 V) and are dropped, as
are the tester's repeated step-end records; both are counted in the cycle's record.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from bsoc.data.readers.common import (
    RawCycle,
    access_error,
    ambient_from_path,
    clean_names,
    drop_repeated_times,
    parse_time,
    load_kind_from_name,
    reject_repeated_header,
    require_columns,
    require_unique,
    unreadable,
)
from bsoc.errors import DataValidationError

CELL = "LG 18650HG2"
NOMINAL_CAPACITY_AH = 3.0
CHARGE_VOLTAGE_V = 4.2  # the datasheet's, when the metadata block does not say
STOPPED_STATUS = "STO"
SUFFIXES: tuple[str, ...] = (".csv",)
HEADER_START = "Time Stamp"
COLUMNS: dict[str, str] = {
    "Voltage": "voltage_v",
    "Current": "current_a",
    "Temperature": "temperature_c",
    "Capacity": "ah",
}
PREAMBLE_LINES_MAX = 200
ENCODING = "latin-1"  # the units line carries a degree sign in a Windows code page


def _header_line(path: Path) -> tuple[int, list[str], dict[str, str]]:
    """The header's line number, its names as written, and the metadata block above it."""
    metadata: dict[str, str] = {}
    try:
        with path.open(encoding=ENCODING, newline="") as handle:
            for number, line in enumerate(handle):
                if line.lstrip('\ufeff"').startswith(HEADER_START):
                    return number, clean_names(next(csv.reader([line]))), metadata
                key, comma, value = line.strip().partition(",")
                if comma and key.strip():
                    metadata[key.strip()] = value.strip()
                if number >= PREAMBLE_LINES_MAX:
                    break
    except OSError as error:
        raise access_error(path, error) from None
    raise DataValidationError(
        f"no header line starting '{HEADER_START},Step,Status,Prog Time,...' in the first "
        f"{PREAMBLE_LINES_MAX} lines: not the LG 18650HG2 layout",
        file=str(path),
        remedy="check --format, or use --format csv with a --column-map",
    )


def _metadata_number(metadata: dict[str, str], key: str, default: float, low: float,
                     high: float) -> float:
    """A number of the metadata block if it is a plausible one, else the datasheet's."""
    try:
        value = float(metadata.get(key, ""))
    except ValueError:
        return default
    return value if low <= value <= high else default


def read(path: Path) -> list[RawCycle]:
    """One cycle from one LG HG2 CSV file (rows are numbered from the first data line)."""
    file = str(path)
    header, names, metadata = _header_line(path)
    try:
        table = pd.read_csv(
            path,
            skiprows=header,
            header=0,
            encoding=ENCODING,
            dtype=str,
            quoting=csv.QUOTE_MINIMAL,
            skipinitialspace=True,
        )
    except Exception as error:  # see common.unreadable
        raise unreadable("CSV", file, error, "check it is an unmodified LG HG2 file") from None
    table.columns = clean_names(list(table.columns))
    used = ["Prog Time", *COLUMNS]
    require_columns(
        list(table.columns),
        used,
        file=file,
        remedy="not the LG 18650HG2 layout: check --format, or use --format csv with a map",
    )
    require_unique(names, used, file=file)
    if len(table) and pd.isna(pd.to_numeric(table["Voltage"].iloc[0], errors="coerce")):
        table = table.iloc[1:]  # the units line (",,,,,,,,V,A,degC,Ah,...") under the header
    table = table.reset_index(drop=True)
    reject_repeated_header(table, used, file=file)
    stopped = np.zeros(len(table), dtype=bool)
    if "Status" in table:
        stopped = (table["Status"].astype("string").str.strip() == STOPPED_STATUS).to_numpy(
            dtype=bool, na_value=False)
        table = table[~stopped]
    frame = pd.DataFrame({canonical: table[source] for source, canonical in COLUMNS.items()})
    frame.insert(0, "time_s", parse_time(table["Prog Time"], file=file, column="Prog Time"))
    frame, repeated = drop_repeated_times(frame)
    name = path.stem
    ambient = ambient_from_path(path)
    if ambient is not None and ambient_from_path(Path(name)) is None:
        name = f"{ambient:g}degC_{name}".replace("-", "n")
    extra: dict[str, object] = {
        "repeated_timestamps_dropped": repeated,
        "stopped_records_dropped": int(stopped.sum()),
    }
    if "Test section" in metadata:
        extra["test_section"] = metadata["Test section"]
    return [
        RawCycle(
            frame=frame,
            name=name,
            source_file=file,
            cell=CELL,
            nominal_capacity_ah=_metadata_number(
                metadata, "Nominal Capacity", NOMINAL_CAPACITY_AH, 0.1, 100.0),
            ambient_c=ambient,
            load_kind=load_kind_from_name(path.stem),
            soc_basis="full-point",
            charge_voltage_v=_metadata_number(
                metadata, "Maximum Voltage", CHARGE_VOLTAGE_V, 3.0, 5.0),
            extra=extra,
            sources={"time_s": "Prog Time", **{c: s for s, c in COLUMNS.items()}},
        )
    ]
