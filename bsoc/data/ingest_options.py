"""How ``bsoc data ingest`` reads a source: the options, their defaults per layout, the splits.

Everything here is recorded in the dataset manifest (``provenance.options``), so a dataset
says how it was made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.data import readers
from bsoc.data.readers.common import RawCycle
from bsoc.data.readers.mapping import TableSpec
from bsoc.errors import ConfigError

# Split rules of the project's real-data benchmark on the Panasonic data (and the same
# drive-cycle families for LG HG2): held-out UDDS/LA92 for test; for validation the
# highway cycle and one mixed cycle (Cycle_4: US06, HWFET, UDDS, LA92 and NN pieces) at
# every temperature, so early stopping sees every temperature and more than one kind of
# driving (highway cycles alone rank models unlike the test split); everything else (NN,
# the other mixed cycles, pulse and capacity tests) for training.
DEFAULT_SPLIT_PATTERNS: dict[str, tuple[str | None, str | None]] = {
    "panasonic": ("UDDS|LA92", "HWFET|HWFTb|Cycle_4"),
    "lg-hg2": ("UDDS|LA92|US06", "HWFET|HWFTb|Mixed8"),
}
# Files left out by default, matched on their path below PATH. Panasonic's end-of-tests
# capacity runs are of the cell aged by ~110 cycles (2.4 Ah instead of 2.8): with the
# fresh cell's Q their SOC labels would contradict every other cycle's.
DEFAULT_EXCLUDE_PATTERNS: dict[str, str] = {"panasonic": "end_of_tests"}
# What Q in SOC = 1 + (charge since full) / Q is: the cell's nominal capacity, the capacity
# its C/20 test measures at the temperature nearest 25 degC (the convention of the
# literature on the LG 18650HG2 data: SOC is the fraction of the 25 degC capacity, so a
# cold cell never reaches 0), or the C/20 capacity at each cycle's own temperature (SOC 0
# is empty at that temperature). ``--capacity AH`` gives Q directly.
SOC_CAPACITIES: tuple[str, ...] = ("nominal", "c20-25degC", "c20-each-temperature")
DEFAULT_SOC_CAPACITY: dict[str, str] = {"lg-hg2": "c20-25degC"}
# Equal time stamps in a csv/parquet table: an error, or the tester's step-end rule (the
# later record is the state at that instant). The lg-hg2 and panasonic layouts always
# keep the last, as their testers write them.
DUPLICATE_TIMES: tuple[str, ...] = ("error", "keep-last")


@dataclass
class IngestOptions:
    """Everything that decides how files become a dataset (recorded in the manifest)."""

    fmt: str
    rate_hz: float = 1.0
    capacity_ah: float | None = None
    trim_rest: bool = True
    test_pattern: str | None = None
    val_pattern: str | None = None
    exclude_pattern: str | None = None
    spec: TableSpec = field(default_factory=TableSpec)
    max_gap_s: float = 3600.0
    soc_capacity: str | None = None
    strict: bool = False
    duplicate_times: str | None = None

    def __post_init__(self) -> None:
        readers.check_format(self.fmt)
        if not (np.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ConfigError(f"--rate {self.rate_hz} must be positive", remedy="e.g. --rate 1")
        if self.capacity_ah is None:
            self.capacity_ah = self.spec.capacity_ah
        if self.capacity_ah is not None and not (self.capacity_ah > 0):
            raise ConfigError(f"--capacity {self.capacity_ah} must be positive Ah")
        if self.max_gap_s <= 0:
            raise ConfigError(f"--max-gap {self.max_gap_s} must be positive seconds")
        tabular = self.fmt in ("csv", "parquet")
        if not tabular and self.spec.columns:
            raise ConfigError(
                f"a column map does not apply to --format {self.fmt} (its layout is fixed)",
                remedy="drop --column-map, or use --format csv",
            )
        if tabular and self.capacity_ah is None:
            raise ConfigError(
                f"--format {self.fmt} needs the cell's capacity",
                remedy="pass --capacity AH (or capacity_ah in the map file)",
            )
        self._check_soc_capacity()
        self._check_duplicate_times(tabular)
        default_test, default_val = DEFAULT_SPLIT_PATTERNS.get(self.fmt, (None, None))
        self.test_pattern = self.test_pattern if self.test_pattern is not None else default_test
        self.val_pattern = self.val_pattern if self.val_pattern is not None else default_val
        if self.exclude_pattern is None:
            self.exclude_pattern = DEFAULT_EXCLUDE_PATTERNS.get(self.fmt)
        for option, pattern in (
            ("--test-pattern", self.test_pattern),
            ("--val-pattern", self.val_pattern),
            ("--exclude-pattern", self.exclude_pattern),
        ):
            try:
                re.compile(pattern or "")
            except re.error as error:
                raise ConfigError(
                    f"{option} '{pattern}' is not a regular expression ({error})",
                    remedy="escape special characters, e.g. 'UDDS|LA92'",
                ) from None

    def _check_soc_capacity(self) -> None:
        if self.soc_capacity is None:
            return
        if self.soc_capacity not in SOC_CAPACITIES:
            raise ConfigError(f"unknown --soc-capacity '{self.soc_capacity}'",
                              remedy=f"use one of {', '.join(SOC_CAPACITIES)}")
        if self.capacity_ah is not None:
            raise ConfigError(
                f"--capacity {self.capacity_ah:g} and --soc-capacity {self.soc_capacity} both "
                "say what Q is", remedy="pass one of them")

    def _check_duplicate_times(self, tabular: bool) -> None:
        if self.duplicate_times is None:
            if tabular:
                self.duplicate_times = "error"
            return
        if not tabular:
            raise ConfigError(
                f"--duplicate-times does not apply to --format {self.fmt}: its layout keeps "
                "the last record of equal time stamps (the tester's step-end record)",
                remedy="drop --duplicate-times")
        if self.duplicate_times not in DUPLICATE_TIMES:
            raise ConfigError(f"unknown --duplicate-times '{self.duplicate_times}'",
                              remedy=f"use one of {', '.join(DUPLICATE_TIMES)}")

    @property
    def soc_definition(self) -> str:
        """How Q is chosen: 'given' (--capacity), or one of SOC_CAPACITIES."""
        if self.capacity_ah is not None:
            return "given"
        return self.soc_capacity or DEFAULT_SOC_CAPACITY.get(self.fmt, "nominal")

    def capacity_for(self, raw: RawCycle) -> float:
        """The capacity the unit checks scale with (given, else nominal)."""
        return float(self.capacity_ah or raw.nominal_capacity_ah or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "rate_hz": self.rate_hz,
            "capacity_ah": self.capacity_ah,
            "trim_rest": self.trim_rest,
            "test_pattern": self.test_pattern,
            "val_pattern": self.val_pattern,
            "exclude_pattern": self.exclude_pattern,
            "column_map": self.spec.columns,
            "units": self.spec.units,
            "current_sign": self.spec.current_sign or "discharge-negative",
            "max_gap_s": self.max_gap_s,
            "soc_capacity": self.soc_definition,
            "strict": self.strict,
            "duplicate_times": self.duplicate_times or "keep-last (fixed by the layout)",
        }


def excluded_files(
    files: list[Path], root: Path, options: IngestOptions
) -> tuple[list[Path], list[str]]:
    """Split ``files`` into those to read and the paths (below ``root``) the exclude pattern drops."""
    if not options.exclude_pattern:
        return files, []
    base = root if root.is_dir() else root.parent
    keep, dropped = [], []
    for file in files:
        relative = str(file.relative_to(base))
        if re.search(options.exclude_pattern, relative):
            dropped.append(relative)
        else:
            keep.append(file)
    if not keep:
        raise ConfigError(f"--exclude-pattern '{options.exclude_pattern}' leaves no files",
                          remedy="loosen the pattern, or pass --exclude-pattern ''")
    return keep, dropped


def split_for(name: str, options: IngestOptions) -> str:
    """test if the test pattern matches the name, else val if the val pattern does, else train."""
    if options.test_pattern and re.search(options.test_pattern, name):
        return "test"
    if options.val_pattern and re.search(options.val_pattern, name):
        return "val"
    return "train"
