"""Reader for any CSV or Parquet table, with a column map.

The map says which source column holds each canonical quantity
(``time_s=Time,voltage_v=U,...``); without one, the file must already use the canonical
names. Text time columns may hold durations ('H:MM:SS') or date-times. Units and sign
are converted afterwards, only when asked (:mod:`bsoc.data.ingest`).

CSV cells are read as text and checked as numbers afterwards, so a stray word or a
repeated header line is reported at its own row, and ``True``/``False`` never pass as 1/0.
Header names are taken as written (a UTF-8 byte-order mark and surrounding spaces aside),
so two columns of the same name are caught instead of being renamed apart.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pandas as pd

from bsoc.data.readers.common import (
    RawCycle,
    ambient_from_path,
    clean_names,
    drop_repeated_times,
    parse_time,
    load_kind_from_name,
    read_bytes,
    reject_repeated_header,
    require_columns,
    require_unique,
    unreadable,
)
from bsoc.errors import DataValidationError

# Quantities a table may provide: the canonical columns, plus an amp-hour counter.
MAPPABLE: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c", "soc", "ah")
REQUIRED: tuple[str, ...] = ("time_s", "voltage_v", "current_a", "temperature_c")
SUFFIXES: dict[str, tuple[str, ...]] = {"csv": (".csv", ".txt"), "parquet": (".parquet", ".pq")}


DELIMITERS = ",;\t|"
SNIFF_LINES = 20
REMEDY = "check the file and --format"


def _decode(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), else Latin-1, which decodes any byte: the
    numbers are ASCII either way, and a Windows-encoded degree sign in a header is harmless."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _delimiter(text: str) -> str:
    """The sniffed delimiter, else the candidate the header line holds most of, else ','
    (one column: the missing columns are then reported)."""
    lines = text.lstrip().splitlines()
    try:
        return csv.Sniffer().sniff("\n".join(lines[:SNIFF_LINES]), delimiters=DELIMITERS).delimiter
    except csv.Error:  # rows disagree (a junk row, a repeated header): trust the header
        header = lines[0] if lines else ""
        return max(DELIMITERS, key=lambda candidate: (header.count(candidate), candidate == ","))


def _csv_table(data: bytes, file: str) -> tuple[list[str], pd.DataFrame]:
    text = _decode(data)
    if not text.strip():
        raise DataValidationError(
            "the file is empty" if not text else "the file holds only white space",
            file=file, remedy="check the file holds samples",
        )
    try:
        cells = pd.read_csv(
            io.StringIO(text), sep=_delimiter(text), header=None, dtype=str,
            skipinitialspace=True,
        )
    except Exception as error:  # see common.unreadable
        raise unreadable("CSV", file, error, REMEDY) from None
    names = clean_names(list(cells.iloc[0]))
    body = cells.iloc[1:].reset_index(drop=True)
    body.columns = range(len(names))
    return names, body


def _parquet_table(data: bytes, file: str) -> tuple[list[str], pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(io.BytesIO(data)).read().to_pandas()
    except Exception as error:  # see common.unreadable
        raise unreadable("Parquet", file, error, REMEDY) from None
    if any(name is not None for name in table.index.names):
        table = table.reset_index()  # a time index written by DataFrame.to_parquet
    names = clean_names(list(table.columns))
    table.columns = range(len(names))
    return names, table.reset_index(drop=True)


def read(
    path: Path, fmt: str, columns: dict[str, str], cell: str, *, duplicate_times: str = "error"
) -> list[RawCycle]:
    """One cycle from one table; ``columns`` maps canonical name -> source column.

    ``duplicate_times="keep-last"`` drops all but the last of equal consecutive time stamps
    (a tester's step-end records; counted in the cycle's record); with "error" validation
    reports the first one."""
    file = str(path)
    load = _parquet_table if fmt == "parquet" else _csv_table
    names, body = load(read_bytes(path), file)
    sources = {name: columns.get(name, name) for name in MAPPABLE}
    require_columns(
        names,
        [sources[name] for name in REQUIRED],
        file=file,
        remedy="map it with --column-map time_s=COLUMN,... or a --map-file",
    )
    present = {name: source for name, source in sources.items() if source in names}
    require_unique(names, list(present.values()), file=file)
    table = pd.DataFrame({source: body[names.index(source)] for source in present.values()})
    if fmt == "csv":
        reject_repeated_header(table, list(present.values()), file=file)
    if not len(table):
        raise DataValidationError(
            "the file has a header but no samples", file=file,
            remedy="check the file holds samples",
        )
    frame = pd.DataFrame({name: table[source] for name, source in present.items()})
    frame["time_s"] = parse_time(frame["time_s"], file=file, column=present["time_s"])
    extra: dict[str, Any] = {}
    if duplicate_times == "keep-last":
        frame, extra["repeated_timestamps_dropped"] = drop_repeated_times(frame)
    return [
        RawCycle(
            frame=frame,
            name=path.stem,
            source_file=file,
            cell=cell,
            nominal_capacity_ah=None,
            ambient_c=ambient_from_path(path),
            load_kind=load_kind_from_name(path.stem),
            extra=extra,
            sources=present,
        )
    ]
