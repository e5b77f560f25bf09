"""Reader for any CSV or Parquet table, with a column map.

The map says which source column holds each canonical quantity
(``time_s=Time,voltage_v=U,...``); without one, the file must already use the canonical
names. Text time columns may hold durations ('H:MM:SS') or date-times. Units and sign
are converted afterwards, only when asked (:mod:`bsoc.data.ingest`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bsoc.data.readers.common import (
    RawCycle,
    ambient_from_path,
    parse_time,
    profile_from_name,
    require_columns,
)
from bsoc.errors import DataValidationError

# Quantities a table may provide: the canonical columns, plus an amp-hour counter.
MAPPABLE: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c", "soc", "ah")
REQUIRED: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c")
SUFFIXES: dict[str, tuple[str, ...]] = {"csv": (".csv", ".txt"), "parquet": (".parquet", ".pq")}


def _load(path: Path, fmt: str) -> pd.DataFrame:
    file = str(path)
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=None, engine="python")
    except pd.errors.EmptyDataError:
        raise DataValidationError("the file is empty", file=file) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as error:
        kind = "Parquet" if fmt == "parquet" else "CSV"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataValidationError(
            f"cannot read as {kind} ({message})", file=file, remedy="check --format"
        ) from None


def read(path: Path, fmt: str, columns: dict[str, str], cell: str) -> list[RawCycle]:
    """One cycle from one table; ``columns`` maps canonical name -> source column."""
    file = str(path)
    table = _load(path, fmt)
    table.columns = [str(c).strip() for c in table.columns]
    sources = {name: columns.get(name, name) for name in MAPPABLE}
    needed = [sources[name] for name in REQUIRED]
    require_columns(
        table,
        needed,
        file=file,
        remedy="map it with --column-map time_s=COLUMN,... or a --map-file",
    )
    present = {name: source for name, source in sources.items() if source in table.columns}
    frame = pd.DataFrame({name: table[source] for name, source in present.items()})
    frame["time_s"] = parse_time(frame["time_s"], file=file, column=present["time_s"])
    return [
        RawCycle(
            frame=frame,
            name=path.stem,
            source_file=file,
            cell=cell,
            nominal_capacity_ah=None,
            ambient_c=ambient_from_path(path),
            profile=profile_from_name(path.stem),
            sources=present,
        )
    ]
