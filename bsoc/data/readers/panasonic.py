"""Reader for the Panasonic 18650PF layout (Kollmeyer, UW-Madison): one MATLAB v5 file,
one struct ``meas`` of N x 1 columns (Time, Voltage, Current, Ah, Battery_Temp_degC, ...).

Current is already discharge negative; ``Ah`` is the tester's amp-hour counter. Drive
cycles start fully charged, so their SOC is anchored at the start; the C/20 OCV test runs
from full to empty and is anchored on its own capacity (see :data:`common.SOC_BASES`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bsoc.data.readers.common import (
    RawCycle,
    ambient_from_path,
    drop_repeated_times,
    load_kind_from_name,
    read_bytes,
    unreadable,
)
from bsoc.data.schema import OCV_LOAD_KIND
from bsoc.errors import DataValidationError

CELL = "Panasonic 18650PF"
NOMINAL_CAPACITY_AH = 2.9
FIELDS: dict[str, str] = {
    "Time": "time_s",
    "Voltage": "voltage_v",
    "Current": "current_a",
    "Battery_Temp_degC": "temperature_c",
    "Ah": "ah",
}
SUFFIXES: tuple[str, ...] = (".mat",)
_DATE_PREFIX = re.compile(r"^\d\d-\d\d-\d\d_\d\d\.\d\d\s+")


def cycle_name(path: Path) -> str:
    """'03-21-17_09.38 25degC_LA92_Pan18650PF.mat' -> '25degC_LA92'."""
    stem = _DATE_PREFIX.sub("", path.stem)
    stem = re.sub(r"_Pan18650PF$", "", stem)
    return re.sub(r"\s+", "_", stem.strip())


def _numeric_field(struct: np.void, source: str, file: str) -> np.ndarray:
    values = np.asarray(struct[source]).reshape(-1)
    if values.dtype.kind not in "fiu":
        raise DataValidationError(
            f"field meas.{source} is not numeric ({values.dtype})",
            file=file,
            column=source,
            remedy="check the file is an unmodified Panasonic 18650PF file",
        )
    return values.astype(np.float64)


def read(path: Path) -> list[RawCycle]:
    """One cycle from one ``.mat`` file."""
    from scipy.io import loadmat  # heavy import kept local

    file = str(path)
    data = read_bytes(path)
    try:
        content = loadmat(io.BytesIO(data))
    except Exception as error:  # see common.unreadable
        raise unreadable(
            "a MATLAB v5 file", file, error,
            "give the Panasonic 18650PF .mat files (MATLAB v7.3 files are not supported)",
        ) from None
    meas = content.get("meas")
    if not isinstance(meas, np.ndarray) or meas.dtype.names is None or meas.size != 1:
        raise DataValidationError(
            "no struct 'meas' in the file: not the Panasonic 18650PF layout",
            file=file,
            remedy="check --format",
        )
    struct = meas.reshape(-1)[0]
    columns = {}
    for source, canonical in FIELDS.items():
        if source not in meas.dtype.names:
            raise DataValidationError(
                f"field meas.{source} is missing: not the Panasonic 18650PF layout",
                file=file,
                column=source,
                remedy="check --format",
            )
        columns[canonical] = _numeric_field(struct, source, file)
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise DataValidationError(
            f"fields have different lengths {lengths}",
            file=file,
            remedy="the file is truncated or corrupt; re-download it",
        )
    frame, repeated = drop_repeated_times(pd.DataFrame(columns))
    name = cycle_name(path)
    load_kind = load_kind_from_name(name)
    extra: dict[str, object] = {"repeated_timestamps_dropped": repeated}
    ambient = ambient_from_path(path)
    if ambient is None and "Chamber_Temp_degC" in meas.dtype.names:
        chamber = _numeric_field(struct, "Chamber_Temp_degC", file)
        if np.isfinite(chamber).any():
            ambient = float(np.round(np.nanmedian(chamber), 1))
            extra["ambient_source"] = "median of meas.Chamber_Temp_degC"
    return [
        RawCycle(
            frame=frame,
            name=name,
            source_file=file,
            cell=CELL,
            nominal_capacity_ah=NOMINAL_CAPACITY_AH,
            ambient_c=ambient,
            load_kind=load_kind,
            soc_basis="own-capacity" if load_kind == OCV_LOAD_KIND else "full-at-start",
            extra=extra,
            sources={canonical: f"meas.{source}" for source, canonical in FIELDS.items()},
        )
    ]
