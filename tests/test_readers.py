"""Readers, SOC derivation and resampling, on small files built here in each source layout
(so they always run), plus ``realdata`` checks against the shared Panasonic files. The LG
18650HG2 layout has its own file, tests/test_lg_hg2.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bsoc.data.ingest import IngestResult, ingest
from bsoc.data.ingest_options import IngestOptions
from bsoc.data.readers.mapping import TableSpec, load_map_file
from bsoc.data.resample import interval_charge_ah, resample
from bsoc.data.schema import coulomb_soc, validate_frame
from bsoc.errors import ConfigError, DataValidationError


def write_panasonic(
    path: Path, time_s: np.ndarray, current_a: np.ndarray, *, repeat_row: int | None = None
) -> dict[str, np.ndarray]:
    """A .mat file in the Panasonic 18650PF layout; Ah is the trapezoidal count of current."""
    from scipy.io import savemat

    ah = coulomb_soc(time_s, current_a, 1.0, 0.0)  # Ah counter from 0 (discharge negative)
    columns = {
        "Time": time_s,
        "Voltage": 3.6 + 0.5 * (1 + ah / 3.0) + 0.02 * current_a,
        "Current": current_a,
        "Ah": ah,
        "Wh": ah * 3.6,
        "Power": current_a * 3.7,
        "Battery_Temp_degC": 25.0 + 0.1 * np.abs(current_a),
        "Chamber_Temp_degC": np.full_like(time_s, np.nan),
    }
    if repeat_row is not None:  # the tester's repeated step-end record
        columns = {k: np.insert(v, repeat_row + 1, v[repeat_row]) for k, v in columns.items()}
    meas = {k: v.reshape(-1, 1) for k, v in columns.items()}
    meas["TimeStamp"] = np.array(["3/21/2017 9:38:00 AM"] * len(columns["Time"]), dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"meas": meas})
    return columns


def drive_profile(seconds: float = 900.0, rest_s: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """10 Hz: a rest, then a 0.7 s-period pulse train with some regeneration."""
    t = np.arange(int(seconds * 10) + 1) / 10.0
    pulses = np.where((t % 0.7) < 0.35, -6.0, 1.5)
    return t, np.where(t < rest_s, 0.0, pulses)


@pytest.fixture
def panasonic_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pan"
    t, i = drive_profile()
    write_panasonic(
        root / "25degC" / "03-21-17_09.38 25degC_LA92_Pan18650PF.mat", t, i, repeat_row=50
    )
    write_panasonic(root / "n10degC" / "06-07-17_08.39 n10degC_HWFET_Pan18650PF.mat", t, i)
    write_panasonic(root / "25degC" / "03-18-17_02.17 25degC_Cycle_1_Pan18650PF.mat", t, i)
    return root


def _options(fmt: str = "panasonic", **kwargs) -> IngestOptions:
    return IngestOptions(fmt=fmt, **kwargs)


def test_panasonic_layout_ingests_with_split_soc_and_records(panasonic_folder):
    result = ingest(panasonic_folder, _options(), name="pan", command="test")
    cycles = {c.meta.name: c for c in result.dataset}
    assert sorted(cycles) == ["25degC_Cycle_1", "25degC_LA92", "n10degC_HWFET"]
    la92 = cycles["25degC_LA92"]
    assert (la92.meta.split, la92.meta.load_kind, la92.meta.ambient_c) == ("test", "la92", 25.0)
    assert cycles["n10degC_HWFET"].meta.split == "val"
    assert cycles["n10degC_HWFET"].meta.ambient_c == -10.0
    assert (cycles["25degC_Cycle_1"].meta.split, cycles["25degC_Cycle_1"].meta.load_kind) == (
        "train",
        "mixed",
    )
    extra = la92.meta.extra
    assert extra["repeated_timestamps_dropped"] == 1
    assert extra["rest_trimmed_s"] == pytest.approx(119.9)  # one rest sample is kept
    assert la92.meta.capacity_ah == 2.9 and la92.meta.source_file.endswith("LA92_Pan18650PF.mat")
    frame = la92.frame
    np.testing.assert_array_equal(frame["time_s"], np.arange(len(frame), dtype=float))
    assert len(frame) == 781  # 900 s - 119.9 s trimmed, at 1 Hz
    # SOC runs from 1 down exactly as the Ah counter says.
    t, i = drive_profile()
    ah = coulomb_soc(t, i, 1.0, 0.0)
    expected = 1.0 + np.interp(frame["time_s"] + 119.9, t, ah) / 2.9
    np.testing.assert_allclose(frame["soc"], expected, atol=1e-9)
    assert frame["soc"].iloc[0] == 1.0
    # Resampling kept the charge: interval currents sum to the Ah counter's change.
    end = frame["time_s"].iloc[-1] + 119.9  # the last partial second is dropped
    assert interval_charge_ah(frame) == pytest.approx(
        np.interp(end, t, ah) - np.interp(119.9, t, ah), abs=1e-9
    )
    validate_frame(frame)


def test_keep_rest_and_rate_options(panasonic_folder):
    file = next(panasonic_folder.rglob("*LA92*"))
    result = ingest(file, _options(trim_rest=False, rate_hz=2.0), name="x", command="test")
    frame = result.dataset.cycles[0].frame
    assert len(frame) == 1801 and frame["time_s"].iloc[1] == 0.5
    assert "rest_trimmed_s" not in result.dataset.cycles[0].meta.extra


def test_ocv_test_soc_spans_0_to_1_on_its_own_capacity(tmp_path):
    t = np.arange(0, 30 * 3600 + 1, 60.0)  # 60 s log: 300 s rest, C/20 discharge, charge
    i = np.select([t < 300, t < 20 * 3600, t < 21 * 3600], [0.0, -0.15, 0.0], 0.15)
    path = tmp_path / "start" / "05-08-17_13.26 C20 OCV Test_C20_25dC.mat"
    write_panasonic(path, t, i)
    cycle = ingest(path, _options(), name="ocv", command="test").dataset.cycles[0]
    assert (cycle.meta.load_kind, cycle.meta.split, cycle.meta.ambient_c) == ("ocv", "train", 25.0)
    delivered = 0.15 * (20 * 3600 - 300) / 3600 + 0.15 * 60 / 3600 / 2 * 2  # plus ramp halves
    assert cycle.meta.capacity_ah == pytest.approx(delivered, rel=1e-3)
    soc = cycle.frame["soc"]
    assert soc.iloc[0] == 1.0 and soc.min() == pytest.approx(0.0, abs=1e-12) and soc.max() == 1.0
    assert len(cycle.frame) == 30 * 3600 - 240 + 1  # upsampled to 1 Hz after the trimmed rest
    assert "own" in cycle.meta.extra["soc_basis"]


def test_regen_overshoot_is_clipped_and_counted_but_a_big_one_is_an_error(tmp_path):
    t = np.arange(0, 600.1, 0.1)
    i = np.where(t < 20, 1.0, -3.0)  # 20 s of regen right after the full charge
    path = tmp_path / "25degC_UDDS_Pan18650PF.mat"
    write_panasonic(path, t, i)
    cycle = ingest(path, _options(), name="x", command="test").dataset.cycles[0]
    assert cycle.meta.extra["soc_clipped_above_1"] > 100
    peak = 1 + coulomb_soc(t, i, 1.0, 0.0).max() / 2.9  # 19.9 A s at the last regen sample
    assert cycle.meta.extra["soc_max_before_clip"] == pytest.approx(peak, rel=1e-12)
    assert cycle.frame["soc"].max() == 1.0
    write_panasonic(path, t, -i)  # charging for minutes: not a full start (or a flipped sign)
    with pytest.raises(DataValidationError, match="does not start full") as caught:
        ingest(path, _options(), name="x", command="test")
    assert caught.value.column == "meas.Current" and caught.value.row is not None


def test_panasonic_errors_name_file_source_row_and_field(tmp_path):
    t, i = drive_profile(60.0, 10.0)
    path = tmp_path / "25degC_NN.mat"
    columns = write_panasonic(path, t, i, repeat_row=5)
    from scipy.io import savemat

    meas = {k: v.reshape(-1, 1) for k, v in columns.items()}
    meas["Voltage"] = meas["Voltage"].copy()
    meas["Voltage"][300] = np.nan  # source row 300, after the dropped repeated record
    savemat(path, {"meas": meas})
    with pytest.raises(DataValidationError) as caught:
        ingest(path, _options(), name="x", command="test")
    assert (caught.value.row, caught.value.column) == (300, "meas.Voltage")
    assert str(path) in str(caught.value)
    del meas["Ah"]
    savemat(path, {"meas": meas})
    with pytest.raises(DataValidationError, match="not the Panasonic") as caught:
        ingest(path, _options(), name="x", command="test")
    assert caught.value.column == "Ah"
    path.write_text("not a mat file")
    with pytest.raises(DataValidationError, match="MATLAB"):
        ingest(path, _options(), name="x", command="test")


def _vendor_table(t: np.ndarray, i: np.ndarray) -> pd.DataFrame:
    """A table in someone else's names and units: mA, charge negative, kelvin, SOC in %."""
    soc = coulomb_soc(t, i, 2.5, 0.9)
    return pd.DataFrame(
        {
            "Elapsed": t,
            "U": 3.7 + 0.02 * i,
            "I_mA": -1000.0 * i,
            "T_K": 298.15 + 0 * t,
            "SOC_pct": 100.0 * soc,
        }
    )


def test_mapped_csv_and_parquet_with_units_and_sign(tmp_path):
    t = np.arange(0, 300.0, 0.5)
    i = np.where((t // 10) % 2 == 0, -2.0, 0.5)
    table = _vendor_table(t, i)
    table.to_csv(tmp_path / "bench_25degC.csv", index=False)
    table.to_parquet(tmp_path / "bench_25degC.parquet", index=False)
    spec = TableSpec(
        columns={"time_s": "Elapsed", "voltage_v": "U", "current_a": "I_mA",
                 "temperature_c": "T_K", "soc": "SOC_pct"},
        units={"current": "mA", "temperature": "K", "soc": "percent"},
        current_sign="charge-negative",
        capacity_ah=2.5,
        cell="vendor cell",
    )  # fmt: skip
    frames = []
    for fmt in ("csv", "parquet"):
        result = ingest(
            tmp_path / f"bench_25degC.{fmt}", _options(fmt, spec=spec, trim_rest=False),
            name="v", command="test",
        )  # fmt: skip
        cycle = result.dataset.cycles[0]
        assert (cycle.meta.cell, cycle.meta.ambient_c, cycle.meta.split) == (
            "vendor cell",
            25.0,
            "train",
        )
        assert any("mA -> A" in note for note in result.dataset.provenance["conversions"])
        assert any("charge-negative" in note for note in result.notes)
        frames.append(cycle.frame)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    native = pd.DataFrame({"time_s": t, "voltage_v": 3.7 + 0.02 * i, "current_a": i,
                           "temperature_c": 25.0, "soc": coulomb_soc(t, i, 2.5, 0.9)})  # fmt: skip
    pd.testing.assert_frame_equal(frames[0], resample(native, 1.0), atol=1e-9)


def test_map_file_equals_command_line_and_unasked_units_are_errors(tmp_path):
    t = np.arange(0, 120.0, 1.0)
    i = np.full_like(t, -1.0)
    _vendor_table(t, i).to_csv(tmp_path / "c.csv", index=False)
    map_file = tmp_path / "map.toml"
    map_file.write_text(
        'capacity_ah = 2.5\ncurrent_sign = "charge-negative"\n[columns]\ntime_s = "Elapsed"\n'
        'voltage_v = "U"\ncurrent_a = "I_mA"\ntemperature_c = "T_K"\nsoc = "SOC_pct"\n'
        '[units]\ncurrent = "mA"\ntemperature = "K"\nsoc = "percent"\n'
    )
    spec = load_map_file(map_file)
    frame = (
        ingest(tmp_path / "c.csv", _options("csv", spec=spec), name="m", command="t")
        .dataset.cycles[0]
        .frame
    )
    assert frame["current_a"].iloc[1] == pytest.approx(-1.0) and frame["temperature_c"].iloc[
        0
    ] == pytest.approx(25.0)
    no_units = TableSpec(columns=spec.columns, current_sign="charge-negative", capacity_ah=2.5)
    with pytest.raises(DataValidationError, match="milliamperes") as caught:
        ingest(tmp_path / "c.csv", _options("csv", spec=no_units), name="m", command="t")
    assert caught.value.column == "I_mA"
    with pytest.raises(ConfigError, match="capacity"):
        _options("csv", spec=TableSpec(columns=spec.columns))
    map_file.write_text("[units]\ncurrent = 'uA'\n")
    with pytest.raises(ConfigError, match="uA"):
        load_map_file(map_file)


def test_resampling_conserves_charge_of_a_10hz_pulse_train():
    t = np.arange(6001) / 10.0  # 600 s at 10 Hz
    i = np.where((t % 0.7) < 0.35, -8.0, 2.0)  # pulses not aligned with whole seconds
    soc = coulomb_soc(t, i, 2.9, 0.9)
    native = pd.DataFrame({"time_s": t, "voltage_v": 3.7 + 0.03 * i, "current_a": i,
                           "temperature_c": 25.0, "soc": soc})  # fmt: skip
    out = resample(native, 1.0)
    np.testing.assert_array_equal(out["time_s"], np.arange(601.0))
    charge_native = (soc[-1] - soc[0]) * 2.9
    assert interval_charge_ah(out) == pytest.approx(charge_native, abs=1e-12)
    increments = np.diff(out["soc"]) * 2.9 * 3600
    np.testing.assert_allclose(increments, out["current_a"].to_numpy()[1:], atol=1e-9)
    # Point sampling (every 10th sample) aliases the pulses into a visible charge error.
    naive = native.iloc[::10]
    naive_charge = float(np.sum(naive["current_a"].to_numpy()[1:])) / 3600.0
    assert abs(naive_charge - charge_native) > 0.01  # 0.02 Ah in 10 minutes
    # Voltage is averaged over the same intervals, so it stays paired with the current.
    np.testing.assert_allclose(out["voltage_v"][1:], 3.7 + 0.03 * out["current_a"][1:], atol=1e-12)


def test_resampling_upsamples_a_slow_log_linearly():
    t = np.arange(0, 601.0, 60.0)
    native = pd.DataFrame({"time_s": t, "voltage_v": 3.0 + t / 600, "current_a": -0.15,
                           "temperature_c": 25.0, "soc": 1 - 0.15 * t / 3600 / 3.0})  # fmt: skip
    out = resample(native, 1.0)
    assert len(out) == 601
    np.testing.assert_allclose(
        out["voltage_v"][1:], 3.0 + (out["time_s"][1:] - 0.5) / 600, atol=1e-12
    )
    np.testing.assert_allclose(out["soc"], 1 - 0.15 * out["time_s"] / 3600 / 3.0, atol=1e-12)


@pytest.mark.realdata
def test_real_panasonic_drive_cycle_soc_follows_the_ah_counter(panasonic_dir, tmp_path):
    from scipy.io import loadmat

    source = next(panasonic_dir.glob("n20degC/*n20degC_HWFET_Pan18650PF.mat"))
    dataset = ingest(source, _options(), name="real", command="test").dataset
    cycle = dataset.cycles[0]
    meas = loadmat(source)["meas"][0, 0]
    time_s, ah = meas["Time"].ravel(), meas["Ah"].ravel()
    assert cycle.meta.extra["rest_trimmed_s"] > 7000  # the 2 h cooling soak
    frame = cycle.frame
    assert frame["soc"].iloc[0] == 1.0 and frame["soc"].is_monotonic_decreasing
    expected = 1 + np.interp(frame["time_s"] + cycle.meta.extra["rest_trimmed_s"], time_s, ah) / 2.9
    np.testing.assert_allclose(frame["soc"], expected, atol=1e-4)
    assert frame["soc"].iloc[-1] == pytest.approx(1 - 1.74 / 2.9, abs=1e-3)  # 60 % DOD cut-off
    assert cycle.meta.ambient_c == -20.0 and cycle.meta.split == "val"
    out = dataset.save(tmp_path / "d")
    assert json.loads((out / "manifest.json").read_text())["cycles"][0]["capacity_ah"] == 2.9


@pytest.mark.realdata
def test_real_c20_ocv_test_spans_full_soc(panasonic_dir):
    source = next(panasonic_dir.glob("capacity_tests/*/*C20 OCV*.mat"))
    cycle = ingest(source, _options(), name="ocv", command="test").dataset.cycles[0]
    assert (cycle.meta.load_kind, cycle.meta.split) == ("ocv", "train")
    assert cycle.frame["soc"].min() == pytest.approx(0.0, abs=1e-9)
    assert cycle.frame["soc"].max() == 1.0
    assert cycle.meta.capacity_ah == pytest.approx(3.0, abs=0.01)  # SOURCE.md: C/20 = 3.00 Ah
    assert cycle.meta.extra["cut_at_gap"]["rows_dropped"] == 1


# --- what was accepted silently or crashed before (issue 14, points 8 and 9) ---


def _canonical_csv(path: Path, t: np.ndarray, i: np.ndarray, **columns: np.ndarray) -> Path:
    voltage = 4.1 + 0.02 * i - np.arange(len(t)) / 1e5
    frame = pd.DataFrame({"time_s": t, "voltage_v": voltage, "current_a": i,
                          "temperature_c": 25.0, **columns})  # fmt: skip
    frame.to_csv(path, index=False)
    return path


def _ingest_csv(path: Path, **kwargs) -> IngestResult:
    options = _options("csv", spec=TableSpec(capacity_ah=3.0, **kwargs), trim_rest=False)
    return ingest(path, options, name="x", command="test")


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    t = np.arange(0, 300.0)
    plain = _canonical_csv(tmp_path / "plain.csv", t, np.full_like(t, -1.0))
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    frames = [_ingest_csv(p).dataset.cycles[0].frame for p in (plain, marked)]
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)


def test_a_repeated_header_line_is_reported_at_its_own_row(tmp_path):
    t = np.arange(0, 600.0)
    path = _canonical_csv(tmp_path / "joined.csv", t, np.full_like(t, -1.0))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:301], lines[0], *lines[301:]]))  # after data row 299
    with pytest.raises(DataValidationError, match="header line repeats") as caught:
        _ingest_csv(path)
    assert caught.value.row == 300 and caught.value.file == str(path)


def test_two_columns_of_the_same_name_are_an_error_naming_both(tmp_path):
    t = np.arange(0, 300.0)
    _canonical_csv(tmp_path / "d.csv", t, np.full_like(t, -1.0))
    text = (tmp_path / "d.csv").read_text().splitlines()
    rows = [f"{line},{'current_a' if k == 0 else '-2.0'}" for k, line in enumerate(text)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataValidationError, match="columns 3 and 5 .* both named") as caught:
        _ingest_csv(tmp_path / "d.csv")
    assert caught.value.column == "current_a"
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(t), pa.array(np.full_like(t, 3.7)), pa.array(np.full_like(t, -1.0)),
              pa.array(np.full_like(t, 25.0)), pa.array(np.full_like(t, 24.0))]  # fmt: skip
    names = ["time_s", "voltage_v", "current_a", "temperature_c", "temperature_c"]
    pq.write_table(pa.table(arrays, names=names), tmp_path / "d.parquet")
    with pytest.raises(DataValidationError, match="columns 4 and 5 .* both named"):
        ingest(tmp_path / "d.parquet", _options("parquet", capacity_ah=3.0), name="x",
               command="test")  # fmt: skip


@pytest.mark.parametrize("writer", ["csv", "parquet"])
def test_a_current_of_booleans_is_an_error(tmp_path, writer):
    t = np.arange(0, 300.0)
    frame = pd.DataFrame({"time_s": t, "voltage_v": 3.7, "current_a": t % 2 == 0,
                          "temperature_c": 25.0})  # fmt: skip
    path = tmp_path / f"b.{writer}"
    frame.to_csv(path, index=False) if writer == "csv" else frame.to_parquet(path)
    with pytest.raises(DataValidationError, match="booleans") as caught:
        ingest(path, _options(writer, capacity_ah=3.0), name="x", command="test")
    assert caught.value.column == "current_a"


def _soc_log(path: Path, *, time_factor: float, soc_capacity_ah: float) -> Path:
    """10 Hz, 600 s at 1 C on a 3 Ah cell, SOC counted with ``soc_capacity_ah``."""
    t = np.arange(6001) / 10.0
    i = np.full_like(t, -3.0)
    return _canonical_csv(path, t * time_factor, i, soc=coulomb_soc(t, i, soc_capacity_ah, 0.95))


def test_time_in_milliseconds_with_a_soc_column_is_caught_by_the_coulomb_count(tmp_path):
    path = _soc_log(tmp_path / "ms.csv", time_factor=1000.0, soc_capacity_ah=3.0)
    with pytest.raises(DataValidationError, match="1000 times as much") as caught:
        _ingest_csv(path)
    assert caught.value.column == "soc"
    assert "--units time=ms" in str(caught.value) and "Q = 3000 Ah" in str(caught.value)
    cycle = _ingest_csv(path, units={"time": "ms"}).dataset.cycles[0]
    assert cycle.duration_s == 600.0
    assert cycle.meta.extra["coulomb_count_to_soc_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_a_soc_column_on_another_capacity_is_a_note_and_is_kept(tmp_path):
    path = _soc_log(tmp_path / "q.csv", time_factor=1.0, soc_capacity_ah=2.0)
    result = _ingest_csv(path)
    assert [n for n in result.notes if "0.667 times" in n and "Q = 2 Ah, not 3" in n]
    cycle = result.dataset.cycles[0]
    assert cycle.meta.extra["coulomb_count_to_soc_ratio"] == pytest.approx(2.0 / 3.0, rel=1e-9)
    assert cycle.frame["soc"].iloc[-1] == pytest.approx(0.95 - 0.5 / 2.0, abs=1e-9)
    assert not _ingest_csv(_soc_log(tmp_path / "ok.csv", time_factor=1.0,
                                    soc_capacity_ah=3.0)).notes  # fmt: skip


@pytest.mark.parametrize(("factor", "needle"), [(1000.0, "time=ms"), (1 / 3600, "time=h")])
def test_an_implausible_sampling_interval_names_the_time_unit(tmp_path, factor, needle):
    t = np.arange(0, 600.0)
    path = _canonical_csv(tmp_path / "t.csv", t * factor, np.full_like(t, -1.0))
    with pytest.raises(DataValidationError, match="median interval") as caught:
        _ingest_csv(path)
    assert needle in str(caught.value) and caught.value.column == "time_s"


def test_milliamperes_on_a_large_cell_are_caught_when_sustained(tmp_path):
    t = np.arange(0, 600.0)
    path = _canonical_csv(tmp_path / "ma.csv", t, np.full_like(t, -100.0))  # 100 mA as A: 33 C
    with pytest.raises(DataValidationError, match="33 C over 60 s") as caught:
        _ingest_csv(path)
    assert caught.value.column == "current_a"
    cycle = _ingest_csv(path, units={"current": "mA"}).dataset.cycles[0]
    assert cycle.frame["current_a"].iloc[1] == pytest.approx(-0.1)


def test_resampling_is_bounded_instead_of_asking_for_terabytes(tmp_path):
    t = np.arange(0, 600.0)
    path = _canonical_csv(tmp_path / "r.csv", t, np.full_like(t, -1.0))
    options = _options("csv", capacity_ah=3.0, rate_hz=1e9)
    with pytest.raises(DataValidationError, match="would make 5.99e\\+11 rows") as caught:
        ingest(path, options, name="x", command="test")
    assert caught.value.file == str(path)


def test_a_chamber_temperature_of_text_is_an_error_naming_the_field(tmp_path):
    from scipy.io import loadmat, savemat

    t, i = drive_profile(60.0, 10.0)
    path = tmp_path / "capacity" / "03-21-17_09.38 UDDS_Pan18650PF.mat"  # no ambient in the name
    write_panasonic(path, t, i)
    meas = {k: loadmat(path)["meas"][0, 0][k] for k in loadmat(path)["meas"].dtype.names}
    meas["Chamber_Temp_degC"] = np.array(["warm"] * len(t), dtype=object)
    savemat(path, {"meas": meas})
    with pytest.raises(DataValidationError, match="Chamber_Temp_degC is not numeric"):
        ingest(path, _options(), name="x", command="test")


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_silent_gap(panasonic_folder,
                                                                     monkeypatch):  # fmt: skip
    import os

    hidden = panasonic_folder / "n10degC"
    listing = os.scandir

    def scandir(path=".", *args):
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataValidationError, match="cannot list the folder .Permission denied"):
        ingest(panasonic_folder, _options(), name="x", command="test")


BRACKETED_MAP = ("time_s=Time [s],voltage_v=Voltage [V],current_a=Current [A],"
                 "temperature_c=Temperature [degC],ah=Capacity [Ah]")


def _bracketed_csv(path: Path, t: np.ndarray, i: np.ndarray, *, repeat_at: int | None = None
                   ) -> Path:
    """A table as re-exported LG data often is: unit-bracketed names, a tester's repeated
    time stamp at ``repeat_at`` (the later record holds the state: 0.1 V higher)."""
    frame = pd.DataFrame({"Time [s]": t, "Voltage [V]": 4.1 + 0.02 * i - t / 1e4,
                          "Current [A]": i, "Temperature [degC]": 25.0,
                          "Capacity [Ah]": coulomb_soc(t, i, 1.0, 0.0)})  # fmt: skip
    if repeat_at is not None:
        later = frame.iloc[[repeat_at]].assign(**{"Voltage [V]": frame["Voltage [V]"][repeat_at]
                                                  + 0.1})
        frame = pd.concat([frame.iloc[: repeat_at + 1], later, frame.iloc[repeat_at + 1:]])
    frame.to_csv(path, index=False)
    return path


def test_repeated_time_stamps_are_an_error_unless_keep_last_is_asked(tmp_path):
    t = np.arange(0, 300.0)
    path = _bracketed_csv(tmp_path / "hg2.csv", t, np.full_like(t, -1.0), repeat_at=100)
    spec = TableSpec(columns=dict(pair.split("=") for pair in BRACKETED_MAP.split(",")),
                     capacity_ah=3.0)
    with pytest.raises(DataValidationError, match="--duplicate-times keep-last") as caught:
        ingest(path, _options("csv", spec=spec, trim_rest=False), name="x", command="test")
    assert (caught.value.row, caught.value.column) == (101, "Time [s]")
    result = ingest(path, _options("csv", spec=spec, trim_rest=False, duplicate_times="keep-last"),
                    name="x", command="test")
    cycle = result.dataset.cycles[0]
    assert cycle.meta.extra["repeated_timestamps_dropped"] == 1
    assert any(note.startswith("dropped 1 repeated time stamps") for note in result.notes)
    assert result.dataset.provenance["options"]["duplicate_times"] == "keep-last"
    voltage = 4.1 - 0.02 - t / 1e4
    kept = voltage[100] + 0.1  # the later record: averaged over (99, 100] with the one before
    assert cycle.frame["voltage_v"][100] == pytest.approx((voltage[99] + kept) / 2, abs=1e-12)
    assert len(cycle.frame) == 300
    with pytest.raises(ConfigError, match="unknown --duplicate-times"):
        _options("csv", capacity_ah=3.0, duplicate_times="keep-first")
    with pytest.raises(ConfigError, match="does not apply to --format panasonic"):
        _options("panasonic", duplicate_times="keep-last")


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from bsoc.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_messages_print_bracketed_names_as_written(tmp_path, capsys):
    t = np.concatenate([np.arange(0, 300.0), np.arange(8000.0, 8300.0)])  # a 2 h logging gap
    path = _bracketed_csv(tmp_path / "run [s].csv", t, np.full_like(t, -1.0))
    argv = ["data", "ingest", str(path), "--format", "csv", "--capacity", "3"]
    code, out, err = _run_cli([*argv, "--column-map", BRACKETED_MAP, "--out",
                               str(tmp_path / "ds")], capsys)
    assert code == 0
    assert "note: run [s]: cut at a 7701 s logging gap" in err
    assert "train (1): run [s]" in out
    wrong = BRACKETED_MAP.replace("Temperature [degC]", "Temperature [C]")
    code, _, err = _run_cli([*argv, "--column-map", wrong, "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert "column 'Temperature [C]'" in err and "'Temperature [degC]'" in err


def test_a_gap_after_the_first_sample_is_a_one_line_error(tmp_path, capsys):
    t = np.array([0.0, 20.0, 21.0, 22.0])  # found by the ingest fuzzer: an IndexError before
    path = tmp_path / "src" / "gap.csv"
    path.parent.mkdir()
    pd.DataFrame({"time_s": t, "voltage_v": 4.1, "current_a": -1.0,
                  "temperature_c": 25.0}).to_csv(path, index=False)  # fmt: skip
    argv = ["data", "ingest", str(path), "--format", "csv", "--capacity", "3", "--max-gap", "5",
            "--out", str(tmp_path / "ds")]  # fmt: skip
    code, _, err = _run_cli(argv, capsys)
    assert code == 2
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "20 s gap" in err and "--max-gap" in err
    assert not (tmp_path / "ds").exists()
