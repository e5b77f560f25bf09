"""Readers: one module per source layout, one entry point to find and read files.

``read(path, fmt, spec)`` returns :class:`RawCycle` objects (source units, source rows);
:mod:`bsoc.data.ingest` turns them into canonical, validated, resampled cycles.
"""

from __future__ import annotations

import os
from pathlib import Path

from bsoc.data.readers import lg_hg2, panasonic, table
from bsoc.data.readers.common import RawCycle
from bsoc.data.readers.mapping import TableSpec
from bsoc.errors import ConfigError, DataValidationError

FORMATS: tuple[str, ...] = ("panasonic", "lg-hg2", "csv", "parquet")
SUFFIXES: dict[str, tuple[str, ...]] = {
    "panasonic": panasonic.SUFFIXES,
    "lg-hg2": lg_hg2.SUFFIXES,
    **table.SUFFIXES,
}
# Nominal capacity (Ah) and cell name per format; csv/parquet need them from the user.
DEFAULT_CAPACITY_AH: dict[str, float] = {
    "panasonic": panasonic.NOMINAL_CAPACITY_AH,
    "lg-hg2": lg_hg2.NOMINAL_CAPACITY_AH,
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}'", remedy=f"use one of {', '.join(FORMATS)}")
    return fmt


def find_files(path: Path, fmt: str) -> list[Path]:
    """The file itself, or every file of the format's suffixes under the folder (sorted)."""
    check_format(fmt)
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataValidationError(
            "no such file or folder", file=str(path), remedy="check the path to ingest"
        )
    suffixes = SUFFIXES[fmt]
    files = sorted(p for p in _walk(path) if p.suffix.lower() in suffixes)
    if not files:
        raise DataValidationError(
            f"no {'/'.join(suffixes)} files in this folder or below",
            file=str(path),
            remedy="check the path and --format",
        )
    return files


def _walk(folder: Path) -> list[Path]:
    """Every file below ``folder``. A folder that cannot be listed is an error, where
    ``Path.rglob`` would skip it silently and the dataset would lack its cycles."""

    def refuse(error: OSError) -> None:
        raise DataValidationError(
            f"cannot list the folder ({error.strerror or error})",
            file=str(error.filename or folder),
            remedy="check that you may read it, or ingest the folders you can read",
        )

    found = []
    for parent, _, names in os.walk(folder, onerror=refuse):
        found.extend(Path(parent) / name for name in names)
    return [file for file in found if file.is_file()]


def read(
    path: Path, fmt: str, spec: TableSpec, duplicate_times: str | None = None
) -> list[RawCycle]:
    """Read one file in the given format (``duplicate_times``: csv/parquet only, see
    :func:`table.read`)."""
    if fmt == "panasonic":
        return panasonic.read(path)
    if fmt == "lg-hg2":
        return lg_hg2.read(path)
    return table.read(path, fmt, spec.columns, spec.cell or "unknown cell",
                      duplicate_times=duplicate_times or "error")


__all__ = ["FORMATS", "RawCycle", "TableSpec", "check_format", "find_files", "read"]
