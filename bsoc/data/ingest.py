"""From source files to a canonical dataset, the same steps for every format.

For each cycle a reader returns (source units, source rows):

1. check every column is a finite number, naming the file's own row and column;
2. convert units and current sign, only where asked (each conversion is logged and
   recorded in the manifest);
3. validate against the canonical schema (SOC still absent), and check that the median
   sampling interval is one a cell tester or logger uses (a time unit mistake otherwise);
4. cut the cycle at a logging gap longer than ``max_gap_s``;
5. derive SOC (:mod:`bsoc.data.ingest_soc`) from the amp-hour counter, or by coulomb
   counting, anchored where the reader says the cell is full: at the file's own full point
   (:mod:`bsoc.data.reference`), at the start, or, for slow full-to-empty tests, on the
   cycle's own delivered charge. Q is the SOC definition's capacity
   (:data:`~bsoc.data.ingest_options.SOC_CAPACITIES`; the C/20 tests of the ingest measure
   it per temperature). A small overshoot above 1 (regeneration right
   after the full charge) is clipped and counted, never silently; a file with no usable
   reference is left out of a folder ingest, named, or refused with ``strict``.
   A SOC column given in the file is checked against the coulomb count instead: a gross
   disagreement is a unit mistake (an error), a moderate one a note;
6. trim the initial rest, shift time to start at 0;
7. resample to a fixed rate, charge-conserving (:mod:`bsoc.data.resample`);
8. validate again and assign the split by regular expressions on the cycle name
   (:mod:`bsoc.data.ingest_options`, which also holds every option and its defaults).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bsoc import __version__
from bsoc.data import readers
from bsoc.data.dataset import Dataset
from bsoc.data.ingest_options import IngestOptions, excluded_files, split_for
from bsoc.data.ingest_soc import bound_soc, check_given_soc, derive_soc
from bsoc.data.readers.common import RawCycle, load_kind_from_name, read_bytes
from bsoc.data.readers.mapping import conversions, convert_units
from bsoc.data.reference import REST_CURRENT_A
from bsoc.data.resample import METHOD, cumulative_integral, interval_charge_ah, resample
from bsoc.data.schema import (
    MIN_SAMPLES,
    OCV_LOAD_KIND,
    Cycle,
    CycleMeta,
    numeric_column,
    validate_frame,
)
from bsoc.errors import ConfigError, DataValidationError, SocReferenceError

# Median interval between samples: real tester logs run from 0.1 s (drive cycles) to 60 s
# (C/20 tests). Outside these bounds the time column is almost surely in another unit.
SAMPLE_INTERVAL_RANGE_S = (1e-3, 600.0)


@dataclass
class IngestResult:
    """The dataset (not yet saved), notes for the log, and the wall time it took."""

    dataset: Dataset
    notes: list[str]
    seconds: float


def _at_source(error: DataValidationError, raw: RawCycle, rows: np.ndarray) -> DataValidationError:
    """The same error, pointing at the file's own row and column names."""
    row = int(rows[error.row]) if error.row is not None and error.row < len(rows) else error.row
    column = raw.sources.get(error.column or "", error.column)
    return DataValidationError(
        error.message, file=raw.source_file, row=row, column=column, remedy=error.remedy
    )


def _validated(
    frame: pd.DataFrame, raw: RawCycle, rows: np.ndarray, capacity: float
) -> pd.DataFrame:
    try:
        return validate_frame(
            frame, file=raw.source_file, nominal_capacity_ah=capacity, require_soc="soc" in frame
        )
    except DataValidationError as error:
        raise _at_source(error, raw, rows) from None


def _numeric(raw: RawCycle, rows: np.ndarray) -> dict[str, np.ndarray]:
    columns = {}
    for name in raw.frame.columns:
        try:
            columns[name] = numeric_column(raw.frame[name].reset_index(drop=True), name, None)
        except DataValidationError as error:
            raise _at_source(error, raw, rows) from None
    return columns


def _charge_ah(frame: pd.DataFrame, until_s: float) -> float:
    """Trapezoidal charge (Ah) of a native-rate table from its start to ``until_s``."""
    if len(frame) < 2:
        return 0.0
    time_s = frame["time_s"].to_numpy()
    current = frame["current_a"].to_numpy()
    return float(cumulative_integral(time_s, current, np.array([until_s]))[0] / 3600.0)


def _cut_at_gap(
    frame: pd.DataFrame, ah: np.ndarray | None, max_gap_s: float, raw: RawCycle
) -> tuple[pd.DataFrame, np.ndarray | None]:
    steps = np.diff(frame["time_s"].to_numpy())
    gaps = np.flatnonzero(steps > max_gap_s)
    if len(gaps) == 0:
        return frame, ah
    end = int(gaps[0]) + 1
    if end < MIN_SAMPLES:
        raise DataValidationError(
            f"the first {end} sample(s) are followed by a {steps[gaps[0]]:.6g} s gap in the log, "
            f"and a cycle cut there would have fewer than {MIN_SAMPLES} samples",
            file=raw.source_file,
            column=raw.sources.get("time_s", "time_s"),
            remedy="check the time column (e.g. --units time=ms), or allow longer gaps with --max-gap",
        )
    raw.extra["cut_at_gap"] = {
        "gap_s": float(steps[gaps[0]]),
        "at_time_s": float(frame["time_s"].iloc[end - 1]),
        "rows_dropped": len(frame) - end,
    }
    return frame.iloc[:end], None if ah is None else ah[:end]


def _trim_rest(frame: pd.DataFrame, extra: dict[str, Any]) -> pd.DataFrame:
    active = np.flatnonzero(np.abs(frame["current_a"].to_numpy()) > REST_CURRENT_A)
    start = max(int(active[0]) - 1, 0) if len(active) else 0
    extra["rest_trimmed_s"] = float(frame["time_s"].iloc[start] - frame["time_s"].iloc[0])
    return frame.iloc[start:]


def _check_sampling(frame: pd.DataFrame, raw: RawCycle) -> None:
    step = float(np.median(np.diff(frame["time_s"].to_numpy())))
    low, high = SAMPLE_INTERVAL_RANGE_S
    if step > high:
        problem = f"longer than any load test is logged at ({high:g} s): time looks like ms"
        remedy = "--units time=ms"
    elif step < low:
        problem = f"shorter than {low * 1000:g} ms: time looks like minutes or hours"
        remedy = "--units time=min or --units time=h"
    else:
        return
    raise DataValidationError(
        f"the median interval between samples is {step:.4g} s, {problem}",
        file=raw.source_file,
        column=raw.sources.get("time_s", "time_s"),
        remedy=remedy,
    )


def _measured(
    raw: RawCycle, options: IngestOptions, rows: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The raw cycle as numbers in canonical units, validated (SOC may still be absent), and
    its amp-hour counter if it has one; cut at the first logging gap."""
    columns = _numeric(raw, rows)
    convert_units(columns, options.spec)
    ah = columns.pop("ah", None)
    frame = _validated(pd.DataFrame(columns), raw, rows, options.capacity_for(raw))
    _check_sampling(frame, raw)
    return _cut_at_gap(frame, ah, options.max_gap_s, raw)


def _ambient(raw: RawCycle, frame: pd.DataFrame, options: IngestOptions) -> float:
    if options.spec.ambient_c is not None:
        return float(options.spec.ambient_c)
    if raw.ambient_c is not None:
        return float(raw.ambient_c)
    raw.extra["ambient_source"] = "first temperature sample (none in the name or options)"
    return round(float(frame["temperature_c"].iloc[0]), 1)


CapacityRule = Callable[[RawCycle, float], float]


def prepare(
    raw: RawCycle, options: IngestOptions, soc_capacity: CapacityRule | None = None
) -> tuple[Cycle, list[str]]:
    """One raw cycle -> one canonical, validated, resampled cycle (+ notes for the log).

    ``soc_capacity(raw, ambient)`` is Q of the SOC definition (default: given, else nominal).
    """
    notes: list[str] = []
    rows = raw.frame.index.to_numpy()
    capacity = options.capacity_for(raw)
    frame, ah = _measured(raw, options, rows)
    extra = raw.extra
    if "cut_at_gap" in extra:
        gap = extra["cut_at_gap"]
        notes.append(
            f"{raw.name}: cut at a {gap['gap_s']:.0f} s logging gap at "
            f"t = {gap['at_time_s']:.0f} s ({gap['rows_dropped']} rows after it dropped)"
        )
    ambient = _ambient(raw, frame, options)
    q_used = soc_capacity(raw, ambient) if soc_capacity else capacity
    if "soc" not in frame:
        soc, q_used, record = derive_soc(frame, ah, q_used, raw, rows)
        extra.update(record)
        frame["soc"] = bound_soc(soc, raw, rows, q_used)
        frame = _validated(frame, raw, rows, capacity)
        if extra["soc_clipped_above_1"]:
            notes.append(
                f"{raw.name}: clipped {extra['soc_clipped_above_1']} samples of SOC above 1 "
                f"(max {extra['soc_max_before_clip']:.5f}: charge counted above the full "
                "point, e.g. regeneration)"
            )
    else:
        extra["soc_source"] = "given in the file"
        disagreement = check_given_soc(frame, raw, capacity)
        if disagreement:
            notes.append(disagreement)
    if options.trim_rest:
        frame = _trim_rest(frame, extra)
    origin = float(frame["time_s"].iloc[0])
    frame = frame.assign(time_s=frame["time_s"] - origin)
    if origin:
        extra["time_origin_s"] = origin
    native = frame
    try:
        frame = resample(native, options.rate_hz)
    except DataValidationError as error:
        raise _at_source(error, raw, rows) from None
    extra["resampling"] = {
        "rate_hz": options.rate_hz,
        "rows_in": len(native),
        "rows_out": len(frame),
        "charge_difference_ah": interval_charge_ah(frame)
        - _charge_ah(native, frame["time_s"].iloc[-1]),
    }
    frame = validate_frame(frame, file=raw.source_file, nominal_capacity_ah=capacity)
    meta = CycleMeta(
        name=raw.name,
        cell=raw.cell,
        nominal_capacity_ah=float(raw.nominal_capacity_ah or capacity),
        ambient_c=ambient,
        split=split_for(raw.name, options),
        capacity_ah=float(q_used),
        source_file=raw.source_file,
        load_kind=raw.load_kind,
        extra=extra,
    )
    return Cycle(frame=frame, meta=meta), notes


def c20_capacities(files: list[Path], options: IngestOptions) -> dict[float, dict[str, Any]]:
    """Capacity per ambient temperature from the slow ('ocv', C/20) tests among ``files``:
    the charge each delivers below its full point (median over the tests of one ambient).

    Files that the ingest will leave out for want of a reference are skipped here too.
    """
    found: dict[float, list[tuple[float, str]]] = {}
    for file in files:
        if load_kind_from_name(file.stem) != OCV_LOAD_KIND:
            continue
        for raw in readers.read(file, options.fmt, options.spec, options.duplicate_times):
            if raw.load_kind != OCV_LOAD_KIND:
                continue
            rows = raw.frame.index.to_numpy()
            frame, ah = _measured(raw, options, rows)
            try:  # with Q = 1, 1 - SOC is the charge below full in Ah
                soc, q_used, _ = derive_soc(frame, ah, 1.0, raw, rows)
            except SocReferenceError:
                continue
            ambient = _ambient(raw, frame, options)
            found.setdefault(ambient, []).append((q_used * (1.0 - float(soc.min())), raw.name))
    return {
        ambient: {
            "capacity_ah": float(np.median([q for q, _ in tests])),
            "cycles": [name for _, name in tests],
        }
        for ambient, tests in sorted(found.items())
    }


def _nearest(temperatures: list[float], to: float) -> float:
    return min(temperatures, key=lambda t: (abs(t - to), -t))


def soc_capacity_rule(
    options: IngestOptions, measured: dict[float, dict[str, Any]], notes: list[str]
) -> tuple[CapacityRule, dict[str, Any]]:
    """Q per cycle under the chosen SOC definition, and the definition as recorded."""
    definition = options.soc_definition
    if definition.startswith("c20") and not measured:
        if options.soc_capacity is not None:
            raise ConfigError(
                f"--soc-capacity {definition} needs a C/20 test among the files (a name with "
                "C20 or OCV), and there is none",
                remedy="ingest the folder with the C/20 tests, pass --capacity AH, or use "
                "--soc-capacity nominal",
            )
        notes.append("no C/20 test among the files: SOC is on the nominal capacity "
                     "(--capacity AH gives another)")
        definition = "nominal"
    record: dict[str, Any] = {
        "capacity": definition,
        "soc": "1 + (charge since the full point) / Q",
        "c20_capacity_by_temperature": {f"{t:g}": m for t, m in measured.items()},
    }
    if definition == "given":
        given = float(options.capacity_ah or 0.0)
        record["q_ah"] = given
        return (lambda raw, ambient: given), record
    if definition == "nominal":
        return (lambda raw, ambient: options.capacity_for(raw)), record
    temperatures = list(measured)
    if definition == "c20-25degC":
        reference = _nearest(temperatures, 25.0)
        q = measured[reference]["capacity_ah"]
        record.update(q_ah=q, measured_at_c=reference)
        return (lambda raw, ambient: q), record
    return (lambda raw, ambient: measured[_nearest(temperatures, ambient)]["capacity_ah"]), record


def _unique_names(cycles: list[Cycle], root: Path) -> None:
    """Cycles from files with the same stem in different folders get the folder in their name."""
    names = [c.meta.name for c in cycles]
    for cycle in cycles:
        if names.count(cycle.meta.name) > 1:
            source = Path(cycle.meta.source_file or cycle.meta.name)
            relative = source.relative_to(root) if source.is_relative_to(root) else source
            cycle.meta.name = "_".join(relative.with_suffix("").parts).replace(" ", "_")


def ingest(
    path: Path,
    options: IngestOptions,
    *,
    name: str,
    command: str,
    on_file: Callable[[Path], None] | None = None,
) -> IngestResult:
    """Read every file under ``path`` and return the dataset (not yet saved) and log notes.

    A file without a usable SOC reference is left out of a folder, with a note naming it
    and why (all are listed in the provenance); alone, or with ``options.strict``, it is
    an error.
    """
    started = time.perf_counter()
    path = Path(path)
    root = path if path.is_dir() else path.parent
    files, excluded = excluded_files(readers.find_files(path, options.fmt), path, options)
    notes = [f"converting {note}, as asked" for *_, note in conversions(options.spec)]
    if excluded:
        notes.append(f"left out {len(excluded)} files matching --exclude-pattern "
                     f"'{options.exclude_pattern}': {', '.join(excluded)}")
    capacity_of, soc_definition = soc_capacity_rule(
        options, c20_capacities(files, options), notes
    )
    cycles: list[Cycle] = []
    left_out: list[dict[str, str]] = []
    for file in files:
        digest = hashlib.sha256(read_bytes(file)).hexdigest()[:16]
        for raw in readers.read(file, options.fmt, options.spec, options.duplicate_times):
            raw.extra["source_sha256"] = digest
            try:
                cycle, cycle_notes = prepare(raw, options, capacity_of)
            except SocReferenceError as error:
                if options.strict or path.is_file():
                    raise
                relative = str(file.relative_to(root))
                left_out.append({"file": relative, "reason": error.message})
                notes.append(f"left out {relative}: {error.message}")
                continue
            cycles.append(cycle)
            notes.extend(cycle_notes)
        if on_file is not None:
            on_file(file)
    if left_out:
        notes.append(
            f"left out {len(left_out)} of {len(files)} files that hold no usable SOC reference "
            "(each named above, all in the manifest's provenance.left_out); --strict makes "
            "them errors"
        )
    if not cycles:
        raise SocReferenceError(
            f"none of the {len(files)} files holds a usable SOC reference",
            file=str(path),
            remedy="check --format, or give SOC in a column",
        )
    _unique_names(cycles, root)
    repeated = sum(c.meta.extra.get("repeated_timestamps_dropped", 0) for c in cycles)
    if repeated:
        files_with = sum(1 for c in cycles if c.meta.extra.get("repeated_timestamps_dropped"))
        notes.append(
            f"dropped {repeated} repeated time stamps (tester step-end records, the last "
            f"kept) in {files_with} files; counts per cycle are in the manifest"
        )
    provenance = {
        "made_by": "bsoc data ingest",
        "command": command,
        "bsoc_version": __version__,
        "source": str(path.resolve()),
        "options": options.to_dict(),
        "excluded_files": excluded,
        "left_out": left_out,
        "soc_definition": soc_definition,
        "resampling": METHOD,
        "conversions": [n for n in notes if n.startswith("converting ")],
        "sign_convention": "current_a discharge negative; soc fraction 0..1",
    }
    dataset = Dataset(name=name, cycles=cycles, provenance=provenance)
    return IngestResult(dataset=dataset, notes=notes, seconds=time.perf_counter() - started)
