"""Property tests of the canonical-table validator.

A valid random table passes unchanged; the same table with one injected fault raises
DataValidationError naming the faulty row and column; arbitrary junk tables raise
DataValidationError or pass, never any other exception.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsoc.data.schema import REQUIRED_COLUMNS, coulomb_soc, validate_frame
from bsoc.errors import DataValidationError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_tables(draw: st.DrawFn, min_rows: int = 2) -> pd.DataFrame:
    """Physically plausible tables: SOC is the coulomb count of the current (2.9 Ah cell)."""
    n = draw(st.integers(min_rows, 60))
    floats = lambda lo, hi: st.lists(  # noqa: E731
        st.floats(lo, hi, allow_nan=False), min_size=n, max_size=n
    )
    steps = np.array(draw(floats(0.01, 5.0)))
    time_s = draw(st.floats(0.0, 1e5)) + np.concatenate([[0.0], np.cumsum(steps[1:])])
    current = np.array(draw(floats(-5.0, 5.0)))
    soc = coulomb_soc(time_s, current, 2.9, draw(st.floats(0.2, 0.8)))
    return pd.DataFrame(
        {
            "time_s": time_s,
            "voltage_v": draw(floats(2.5, 4.2)),
            "current_a": current,
            "temperature_c": draw(floats(-20.0, 50.0)),
            "soc": soc,
        }
    )


@SETTINGS
@given(valid_tables(), st.permutations(list(REQUIRED_COLUMNS)))
def test_valid_tables_pass_unchanged(frame, order):
    shuffled = frame[order].assign(note="kept out")
    out = validate_frame(shuffled, file="f.csv")
    pd.testing.assert_frame_equal(out, frame, check_exact=True)


def _non_finite_fault(frame, draw):
    column = draw(st.sampled_from(REQUIRED_COLUMNS))
    row = draw(st.integers(0, len(frame) - 1))
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = draw(st.sampled_from([np.nan, np.inf, -np.inf, None]))
    return row, column


def _text_fault(frame, draw):
    column = draw(st.sampled_from(REQUIRED_COLUMNS))
    row = draw(st.integers(0, len(frame) - 1))
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = draw(st.sampled_from(["abc", "3,7", "", "1.2.3", "--"]))
    return row, column


def _time_fault(frame, draw):
    row = draw(st.integers(1, len(frame) - 1))
    back = draw(st.sampled_from([0.0, 0.5, 100.0]))
    frame.loc[row, "time_s"] = frame.loc[row - 1, "time_s"] - back
    return row, "time_s"


def _unit_fault(frame, draw):
    column, value = draw(
        st.sampled_from(
            [
                ("voltage_v", 3700.0),  # millivolts
                ("voltage_v", 0.0),  # dead channel
                ("current_a", -2500.0),  # milliamperes
                ("temperature_c", 298.15),  # kelvin
                ("soc", 85.0),  # percent
                ("soc", -0.05),
            ]
        )
    )
    row = draw(st.integers(0, len(frame) - 1))
    frame.loc[row, column] = value
    return row, column


def _whole_column_unit_fault(frame, draw):
    column, scale, offset = draw(
        st.sampled_from([("voltage_v", 1000.0, 0.0), ("temperature_c", 1.0, 273.15)])
    )
    frame[column] = frame[column] * scale + offset
    return 0, column


FAULTS = [_non_finite_fault, _text_fault, _time_fault, _unit_fault, _whole_column_unit_fault]


@SETTINGS
@given(valid_tables(), st.sampled_from(FAULTS), st.data())
def test_single_fault_names_row_and_column(frame, fault, data):
    row, column = fault(frame, data.draw)
    with pytest.raises(DataValidationError) as caught:
        validate_frame(frame, file="cell.csv")
    error = caught.value
    assert (error.row, error.column, error.file) == (row, column, "cell.csv")
    assert f"row {row}" in str(error) and column in str(error) and "cell.csv" in str(error)


@SETTINGS
@given(valid_tables(), st.sampled_from(REQUIRED_COLUMNS))
def test_missing_column_is_named(frame, column):
    with pytest.raises(DataValidationError) as caught:
        validate_frame(frame.drop(columns=[column]), file="x.parquet")
    assert caught.value.column == column and caught.value.row is None


def test_renamed_column_gets_a_hint():
    frame = pd.DataFrame(
        {"time_s": [0.0, 1.0], "voltage": [3.7, 3.7], "current_a": [0.0, 0.0],
         "temperature_c": [25.0, 25.0], "soc": [0.5, 0.5]}
    )  # fmt: skip
    with pytest.raises(DataValidationError, match="found 'voltage'"):
        validate_frame(frame)


def test_repeated_column_is_an_error_not_a_crash():
    frame = pd.DataFrame(np.full((3, 6), 1.0), columns=[*REQUIRED_COLUMNS, "soc"])
    frame["time_s"] = [0.0, 1.0, 2.0]
    with pytest.raises(DataValidationError) as caught:
        validate_frame(frame)
    assert caught.value.column == "soc"


def test_empty_table():
    with pytest.raises(DataValidationError, match="empty"):
        validate_frame(pd.DataFrame(columns=list(REQUIRED_COLUMNS)), file="e.csv")


def test_flipped_current_sign_is_caught():
    t = np.arange(600.0)
    current = np.full(600, -2.0)
    frame = pd.DataFrame(
        {"time_s": t, "voltage_v": 3.7, "current_a": -current, "temperature_c": 25.0,
         "soc": coulomb_soc(t, current, 1.0)}
    )  # fmt: skip
    with pytest.raises(DataValidationError, match="sign") as caught:
        validate_frame(frame)
    assert caught.value.column == "current_a"
    validate_frame(frame.assign(current_a=current))  # the right sign passes


CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@SETTINGS
@given(
    st.lists(
        st.sampled_from([*REQUIRED_COLUMNS, "capacity_ah", "Time", "junk"]),
        min_size=0,
        max_size=8,
    ),
    st.integers(0, 6),
    st.data(),
)
def test_junk_tables_raise_only_data_validation_error(columns, rows, data):
    values = {
        f"{name}#{i}": data.draw(st.lists(CELLS, min_size=rows, max_size=rows))
        for i, name in enumerate(columns)
    }
    frame = pd.DataFrame(values)
    frame.columns = [key.split("#")[0] for key in values] if values else frame.columns
    try:
        out = validate_frame(frame, file="junk.csv")
    except DataValidationError as error:
        assert "junk.csv" in str(error)
    else:
        assert list(out.columns[:5]) == list(REQUIRED_COLUMNS)
        assert np.isfinite(out.to_numpy()).all()


def _steady(seconds: int, current: float) -> pd.DataFrame:
    t = np.arange(float(seconds))
    i = np.full_like(t, current)
    return pd.DataFrame({"time_s": t, "voltage_v": 3.7, "current_a": i, "temperature_c": 25.0,
                         "soc": coulomb_soc(t, i, 1000.0, 0.9)})  # fmt: skip


def test_a_single_sample_is_not_a_cycle():
    with pytest.raises(DataValidationError, match="only 1 sample"):
        validate_frame(_steady(1, -1.0), file="one.csv")
    assert len(validate_frame(_steady(2, -1.0))) == 2


def test_booleans_are_not_measurements():
    frame = _steady(10, -1.0)
    for flags in (frame["time_s"] % 2 == 0, (frame["time_s"] % 2 == 0).map(str)):
        with pytest.raises(DataValidationError, match="booleans") as caught:
            validate_frame(frame.assign(current_a=flags))
        assert caught.value.column == "current_a"


def test_current_held_above_20c_for_a_minute_is_an_error_naming_where():
    frame = _steady(200, -25.0 * 3.0)  # 25 C on a 3 Ah cell, from the start
    with pytest.raises(DataValidationError, match="25 C over 60 s") as caught:
        validate_frame(frame, nominal_capacity_ah=3.0)
    assert (caught.value.row, caught.value.column) == (60, "current_a")
    validate_frame(frame.assign(current_a=-19.0 * 3.0), nominal_capacity_ah=3.0)


def test_short_pulses_above_20c_pass_when_the_minute_average_is_plausible():
    frame = _steady(600, 0.0)
    pulses = np.where(frame["time_s"] % 60 < 10, -35.0 * 3.0, 0.0)  # 10 s at 35 C a minute
    validate_frame(frame.assign(current_a=pulses), nominal_capacity_ah=3.0)


def test_decimal_commas_are_named_as_such():
    frame = _steady(5, -1.0).astype({"voltage_v": object})
    frame.loc[2, "voltage_v"] = "3,71"
    with pytest.raises(DataValidationError, match="decimal commas") as caught:
        validate_frame(frame)
    assert (caught.value.row, caught.value.column) == (2, "voltage_v")
