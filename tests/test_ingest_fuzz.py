"""A property-based fuzzer of ``bsoc data ingest`` over CSV, Parquet and .mat inputs.

Inputs range from random bytes through damaged files to nearly valid tables with a few
cells, names or rows made wrong. Whatever the input, the command ends in a dataset that
loads, or in a one-line error with exit code 2; never a traceback; and every input file is
byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsoc.cli import main
from bsoc.data.dataset import Dataset

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CANONICAL = ["time_s", "voltage_v", "current_a", "temperature_c"]
NAMES = st.sampled_from([*CANONICAL, "soc", "ah", "\ufefftime_s", " current_a ", "junk", ""])
JUNK_CELLS = st.one_of(
    st.sampled_from(["", "abc", "1,5", "True", "false", "NaN", "inf", "-inf", "1e400", "0x10",
                     "12:00:01", "2024-01-01 10:00", "time_s", "\x00"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=6),
)  # fmt: skip


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def ingest_ends_well(source: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> int:
    """Run the CLI on ``source`` (a file in its own folder); check the whole contract."""
    before = _digests(source.parent)
    out = source.parent.parent / "out"
    argv = ["data", "ingest", str(source), "--format", fmt, "--out", str(out)]
    if fmt in ("csv", "parquet"):
        argv += ["--capacity", "3"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    code = int(done.value.code or 0)
    assert "Traceback" not in captured.err + captured.out
    if code == 0:
        assert len(Dataset.load(out)) == 1
    else:
        errors = [line for line in captured.err.splitlines()
                  if line.strip() and not line.startswith("note:")]  # fmt: skip
        assert code == 2, captured.err
        assert len(errors) == 1 and errors[0].startswith("error:"), captured.err
    assert _digests(source.parent) == before
    return code


def _in_fresh_folder(name: str, content: bytes, test) -> int:
    with tempfile.TemporaryDirectory() as root:
        source = Path(root) / "src" / name
        source.parent.mkdir()
        source.write_bytes(content)
        return test(source)


@st.composite
def plausible_rows(draw: st.DrawFn) -> list[list[object]]:
    """A short, physically plausible log (1 Hz-ish, 3 Ah cell from full), as numbers."""
    n = draw(st.integers(2, 40))
    steps = draw(st.lists(st.floats(0.05, 20.0), min_size=n, max_size=n))
    time_s = np.concatenate([[0.0], np.cumsum(steps[1:])])
    current = draw(st.lists(st.floats(-6.0, 0.5), min_size=n, max_size=n))
    voltage = draw(st.lists(st.floats(3.0, 4.2), min_size=n, max_size=n))
    return [[float(t), v, i, 25.0] for t, v, i in zip(time_s, voltage, current, strict=True)]


@st.composite
def csv_texts(draw: st.DrawFn) -> bytes:
    """Nearly valid CSV: names, cells and rows made wrong in a few places."""
    names = draw(st.one_of(st.just(list(CANONICAL)), st.lists(NAMES, min_size=1, max_size=6)))
    rows = [[repr(cell) for cell in row][: len(names)] for row in draw(plausible_rows())]
    for _ in range(draw(st.integers(0, 3))):
        row, column = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(names) - 1))
        if column < len(rows[row]):
            rows[row][column] = draw(JUNK_CELLS)
    if draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), list(names))  # a repeated header
    rows = rows[: draw(st.integers(0, len(rows)))]
    sep = draw(st.sampled_from([",", ";", "\t"]))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = end.join(sep.join(map(str, line)) for line in [names, *rows]) + end
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + text.encode("utf-8", errors="surrogatepass")


@FUZZ
@given(st.one_of(st.binary(max_size=400), csv_texts()))
def test_csv_inputs_end_in_a_dataset_or_one_line(capsys, content):
    _in_fresh_folder("cell.csv", content, lambda path: ingest_ends_well(path, "csv", capsys))


def _column(draw: st.DrawFn, kind: str, n: int, plausible: list[float]) -> object:
    import pyarrow as pa

    if kind == "plausible":
        return pa.array(plausible, type=pa.float64())
    if kind == "floats":
        return pa.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), type=pa.float64())
    if kind == "ints":
        values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        return pa.array(values, type=pa.int64())
    if kind == "bools":
        return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if kind == "text":
        return pa.array(draw(st.lists(JUNK_CELLS, min_size=n, max_size=n)), type=pa.string())
    if kind == "nulls":
        return pa.array([None] * n, type=pa.float64())
    if kind == "timestamps":
        return pa.array(pd.date_range("2024-01-01", periods=n, freq="s"))
    return pa.array(pd.to_timedelta(np.arange(n), unit="s"))  # durations


KINDS = ["plausible"] * 6 + ["floats", "ints", "bools", "text", "nulls", "timestamps", "durations"]


@st.composite
def parquet_tables(draw: st.DrawFn) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = draw(plausible_rows())
    rows = rows[: draw(st.integers(0, len(rows)))]
    n = len(rows)
    names = draw(st.one_of(st.just(list(CANONICAL)), st.lists(NAMES, min_size=1, max_size=6)))
    arrays = []
    for position, _ in enumerate(names):
        plausible = [row[position % 4] for row in rows]
        arrays.append(_column(draw, draw(st.sampled_from(KINDS)), n, plausible))
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays, names=names), buffer)
    return buffer.getvalue()


@st.composite
def damaged(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid file truncated, or with a few bytes overwritten."""
    content = bytearray(draw(valid))
    if draw(st.booleans()):
        return bytes(content[: draw(st.integers(0, len(content)))])
    for _ in range(draw(st.integers(1, 8))):
        content[draw(st.integers(0, len(content) - 1))] = draw(st.integers(0, 255))
    return bytes(content)


@FUZZ
@given(st.one_of(st.binary(max_size=400), parquet_tables(), damaged(parquet_tables())))
def test_parquet_inputs_end_in_a_dataset_or_one_line(capsys, content):
    _in_fresh_folder("cell.parquet", content,
                     lambda path: ingest_ends_well(path, "parquet", capsys))  # fmt: skip


MAT_FIELDS = ["Time", "Voltage", "Current", "Ah", "Battery_Temp_degC", "Chamber_Temp_degC"]


@st.composite
def mat_files(draw: st.DrawFn) -> bytes:
    """A 'meas' struct in the Panasonic layout, some fields of the wrong kind or length."""
    from scipy.io import savemat

    n = draw(st.integers(0, 40))
    time_s = np.cumsum(draw(st.lists(st.floats(0.05, 20.0), min_size=n, max_size=n)))
    current = np.array(draw(st.lists(st.floats(-6.0, 0.5), min_size=n, max_size=n)))
    ah = np.concatenate([[0.0], np.cumsum(current[1:] * np.diff(time_s)) / 3600.0])[:n]
    good = {"Time": time_s, "Voltage": np.full(n, 3.9), "Current": current, "Ah": ah,
            "Battery_Temp_degC": np.full(n, 25.0), "Chamber_Temp_degC": np.full(n, 25.0)}
    meas = {}
    for name in draw(st.lists(st.sampled_from(MAT_FIELDS), unique=True, min_size=3)):
        kind = draw(st.sampled_from(["good"] * 5 + ["text", "short", "floats", "bools"]))
        if kind == "text":
            meas[name] = np.array(draw(st.lists(JUNK_CELLS, min_size=n, max_size=n)), dtype=object)
        elif kind == "short":
            meas[name] = good[name][: max(n - 1, 0)]
        elif kind == "floats":
            meas[name] = np.array(draw(st.lists(st.floats(), min_size=n, max_size=n)))
        elif kind == "bools":
            meas[name] = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        else:
            meas[name] = good[name]
    buffer = io.BytesIO()
    savemat(buffer, {"meas": {k: np.asarray(v).reshape(-1, 1) for k, v in meas.items()}})
    return buffer.getvalue()


@FUZZ
@given(st.one_of(st.binary(max_size=400), mat_files(), damaged(mat_files())))
def test_mat_inputs_end_in_a_dataset_or_one_line(capsys, content):
    name = "03-21-17_09.38 25degC_UDDS_Pan18650PF.mat"
    _in_fresh_folder(name, content, lambda path: ingest_ends_well(path, "panasonic", capsys))


def test_the_fuzzer_reaches_both_outcomes(tmp_path, capsys):
    """The property would hold vacuously if every input were rejected: a valid CSV, Parquet
    and .mat file each make a dataset, and one wrong cell makes the one-line error."""
    rows = [[float(t), 4.0 - t / 1e4, -1.0, 25.0] for t in range(120)]
    frame = pd.DataFrame(rows, columns=CANONICAL)
    csv = frame.to_csv(index=False).encode()
    assert _in_fresh_folder("a.csv", csv, lambda p: ingest_ends_well(p, "csv", capsys)) == 0
    broken = csv.replace(b"\n7.0,", b"\nseven,", 1)
    assert _in_fresh_folder("b.csv", broken, lambda p: ingest_ends_well(p, "csv", capsys)) == 2
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    assert _in_fresh_folder("c.parquet", parquet.getvalue(),
                            lambda p: ingest_ends_well(p, "parquet", capsys)) == 0  # fmt: skip
    from scipy.io import savemat

    mat = io.BytesIO()
    t = frame["time_s"].to_numpy()
    savemat(mat, {"meas": {"Time": t, "Voltage": frame["voltage_v"].to_numpy(),
                           "Current": np.full_like(t, -1.0), "Ah": -t / 3600.0,
                           "Battery_Temp_degC": np.full_like(t, 25.0)}})  # fmt: skip
    name = "25degC_UDDS.mat"
    assert _in_fresh_folder(name, mat.getvalue(),
                            lambda p: ingest_ends_well(p, "panasonic", capsys)) == 0  # fmt: skip
