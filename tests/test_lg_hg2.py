"""The LG 18650HG2 layout: SOC from each file's own full point, capacity per temperature,
files without a reference left out, load kinds. Small files are written here in the exact
layout (metadata block, NUL byte line, CRLF, trailing commas, units line, Prog Time past
24 h, step-end records, STO records, counter restarts); the shared real files are checked
when present (``../shared/data/real/lg-18650hg2`` or ``$BSOC_LG_DIR``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bsoc.cli import main
from bsoc.data.ingest import ingest
from bsoc.data.ingest_options import IngestOptions
from bsoc.data.readers.common import load_kind_from_name
from bsoc.data.reference import ChargeCutoff, cv_charge_ends
from bsoc.data.schema import Cycle
from bsoc.errors import ConfigError, DataValidationError, SocReferenceError

LG_DIR = Path(
    os.environ.get(
        "BSOC_LG_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "lg-18650hg2",
    )
)
HEADER = ("Time Stamp,Step,Status,Prog Time,Step Time,Cycle,Cycle Level,Procedure,Voltage,"
          "Current,Temperature,Capacity,WhAccu,Cnt,")
UNITS = ",,,,,,,,[V],[A],[C],[Ah],[Wh],[Cnt],"
Q_NOMINAL = 3.0


@dataclass
class Phase:
    """One tester step: ``seconds`` long, logged every ``dt`` s (the first record at ``dt``)."""

    status: str
    seconds: float
    dt: float
    current: Callable[[np.ndarray], np.ndarray]  # of the time within the step
    voltage: Callable[[np.ndarray], np.ndarray]
    restarts_counter: bool = False  # the tester's Capacity counts from 0 in this step


def constant(value: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: np.full_like(t, value)


def ramp(start: float, stop: float, seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: start + (stop - start) * t / seconds


def taper(start_a: float, end_a: float, seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    """A CV charge's current, decaying exponentially from ``start_a`` to ``end_a``."""
    return lambda t: start_a * (end_a / start_a) ** (t / seconds)


def metadata(section: str, max_voltage: str) -> list[str]:
    return ["", "", "Measurement ID,549", "Battery Name,LG HG2 18650_SN62A4",
            "Battery Type,Li-ion", "Circuit,Circuit001", "Program,1744 - LG_HG2_NN_Char",
            "Start Time,10/25/2018 4:08:59 AM", "End Time,10/28/2018 11:02:52 AM",
            f"Test section,{section}", "Comment,", "OrderNo,", "Producer, LG", "Type, Li-ion",
            "Nominal Voltage, 3.7", "Nominal Current, 3", "Nominal Capacity, 3", "Cells, 1",
            f"Maximum Voltage, {max_voltage}", "Gassing Voltage, 0", "Break Voltage, 0",
            "Charge Factor, 0", "Impedance, 0.02", "Cold Cranking Current, 0",
            "Energy Density, 0", "Comment,HG2 cell with 10AWG wire soldered  to cell", "",
            "\x00"]  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{rest:06.3f}"


def write_lg(
    path: Path,
    phases: list[Phase],
    *,
    start_s: float = 29 * 3600.0,
    counter_start_ah: float = 0.0,
    stopped: bool = False,
    max_voltage: str = "4.2",
) -> dict[str, np.ndarray]:
    """A CSV exactly in the layout of the McMaster files; returns the written time (Prog
    Time in s) and Capacity counter per data row, step-end repeats and STO records left out."""
    lines = [*metadata(path.stem.split("_", 1)[-1], max_voltage), HEADER, UNITS]
    times, counters = [], []
    now, counter, count = start_s, counter_start_ah, 0
    for step, phase in enumerate(phases, start=3):
        t = np.arange(1, int(round(phase.seconds / phase.dt)) + 1) * phase.dt
        current, voltage = phase.current(t), phase.voltage(t)
        if phase.restarts_counter:
            counter = 0.0
        for k in range(len(t)):
            counter += current[k] * phase.dt / 3600.0
            count += 1
            row = (f"10/26/2018 9:29:22 AM,{step},{phase.status},{_clock(now + t[k])},"
                   f"{_clock(t[k])},0,0,LG_HG2_NN_Char,{voltage[k]:.5f},{current[k]:.5f},"
                   f"23.97615,{counter:.5f},0.00000,{count:.5f},")  # fmt: skip
            lines.append(row)
            times.append(now + t[k])
            counters.append(round(counter, 5))
        lines.append(row)  # the tester's step-end record repeats the step's last row
        now += t[-1]
    if stopped:  # the program stops: a record of zeros, not a measurement
        lines.append(f"10/26/2018 9:29:22 AM,9999,STO,{_clock(now + 0.003)},00:00:00.000,0,0,"
                     "LG_HG2_NN_Char,0.00000,0.00000,23.97615,0.00000,0.00000,0.00000,")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return {"time_s": np.array(times), "ah": np.array(counters)}


def c20_test(capacity_ah: float, *, measured_offset_a: float = 0.0, start_v: float = 4.176,
             rest_first: bool = True, dt: float = 600.0) -> list[Phase]:
    """(A minute's rest after the previous charge,) C/20 discharge to the cut-off, a rest,
    C/20 charge back to 4.2 V, CV to 50 mA, a rest; the charge puts back exactly what the
    discharge took (as the tester counts it). The current is logged ``measured_offset_a``
    high, as a tester's offset would be."""
    discharge_s = round(capacity_ah / 0.15 * 3600.0 / dt) * dt
    cv = taper(0.15, 0.048, 3600.0)
    cv_ah = float(np.sum(cv(np.arange(1, 61) * 60.0))) * 60.0 / 3600.0
    charge_s = int((capacity_ah - cv_ah) / 0.15 * 3600.0 / dt) * dt
    charge_a = (capacity_ah - cv_ah) * 3600.0 / charge_s
    offset = measured_offset_a
    rest = [Phase("PAU", 60.0, 60.0, constant(0.0), constant(4.19))] if rest_first else []
    return [
        *rest,
        Phase("DCH", discharge_s, dt, constant(-0.15 + offset), ramp(start_v, 2.8, discharge_s)),
        Phase("PAU", 3600.0, dt, constant(0.0), ramp(2.85, 2.95, 3600.0)),
        Phase("CHA", charge_s, dt, constant(charge_a + offset), ramp(2.96, 4.2, charge_s)),
        Phase("CHA", 3600.0, 60.0, lambda t: cv(t) + offset, constant(4.19979)),
        Phase("PAU", 3600.0, dt, constant(0.0), ramp(4.197, 4.188, 3600.0)),
    ]


def drive(seconds: float = 1800.0, *, start_v: float = 4.186) -> list[Phase]:
    """A drive cycle logged at 0.1 s from the rest after a full charge, with regeneration."""
    def current(t: np.ndarray) -> np.ndarray:  # a light load first, as the real files
        return np.where(t < 10.0, -0.04, np.where((t % 30.0) < 24.0, -4.0, 1.0))

    return [Phase("TABLE", seconds, 0.1, current, lambda t: start_v - 0.3 * t / seconds
                  + 0.05 * current(t)),
            Phase("PAU", 600.0, 0.1, constant(0.0), constant(3.9))]


def charge(charged_ah: float, *, start_v: float = 3.2) -> list[Phase]:
    """The charge between tests: rest, 1C to 4.2 V, CV to 50 mA, rest (60 s log)."""
    cv_s = 2400.0
    cv_ah = 3.0 * cv_s / 3600.0 * (1 - 0.048 / 3.0) / np.log(3.0 / 0.048)
    cc_s = (charged_ah - cv_ah) / 3.0 * 3600.0
    return [
        Phase("PAU", 3600.0, 60.0, constant(0.0), ramp(start_v - 0.02, start_v, 3600.0)),
        Phase("CHA", cc_s, 60.0, constant(3.0), ramp(start_v + 0.2, 4.2, cc_s)),
        Phase("CHA", cv_s, 60.0, taper(3.0, 0.048, cv_s), constant(4.19979)),
        Phase("PAU", 3600.0, 60.0, constant(0.0), ramp(4.197, 4.186, 3600.0)),
        Phase("PAU", 1.0, 1.0, constant(0.0), constant(4.186), restarts_counter=True),
    ]


def options(**kwargs: object) -> IngestOptions:
    return IngestOptions(**{"fmt": "lg-hg2", "rate_hz": 0.1, **kwargs})  # type: ignore[arg-type]


def on_grid(cycle: Cycle, written: dict[str, np.ndarray], soc: np.ndarray) -> np.ndarray:
    """The expected SOC of the written rows at the cycle's (trimmed, resampled) times."""
    origin = cycle.meta.extra.get("time_origin_s", 0.0)
    return np.interp(cycle.frame["time_s"] + origin, written["time_s"], soc)


def test_exact_layout_reads_and_a_drive_cycle_counts_down_from_its_full_start(tmp_path):
    path = tmp_path / "LG_HG2_data" / "n10degC" / "601_US06.csv"
    written = write_lg(path, drive(), start_s=23.5 * 3600.0)  # Prog Time passes 24:00:00
    result = ingest(path, options(), name="lg", command="test")
    cycle = result.dataset.cycles[0]
    assert (cycle.meta.name, cycle.meta.load_kind, cycle.meta.split, cycle.meta.ambient_c) == (
        "n10degC_601_US06", "us06", "test", -10.0)
    extra = cycle.meta.extra
    assert extra["repeated_timestamps_dropped"] == 2 and extra["test_section"] == "US06"
    assert extra["soc_reference"]["kind"].startswith("start within 50 mV")
    assert extra["soc_reference"]["row"] == 0
    # no C/20 test in a single file: Q is the nominal capacity, and the log says so
    assert cycle.meta.capacity_ah == Q_NOMINAL
    assert any("no C/20 test" in note for note in result.notes)
    expected = 1 + (written["ah"] - written["ah"][0]) / Q_NOMINAL
    np.testing.assert_allclose(cycle.frame["soc"], on_grid(cycle, written, expected), atol=1e-9)
    assert np.all(np.diff(cycle.frame["time_s"]) > 0)


def test_a_lower_maximum_voltage_in_the_metadata_is_the_charge_voltage(tmp_path):
    path = tmp_path / "25degC" / "551_Mixed1.csv"
    write_lg(path, drive(start_v=4.06), max_voltage="4.1")  # full for a 4.1 V charge
    cycle = ingest(path, options(), name="lg", command="test").dataset.cycles[0]
    assert cycle.meta.extra["soc_reference"]["voltage_v"] == pytest.approx(4.058, abs=1e-4)
    write_lg(path, drive(start_v=4.06))  # 140 mV below a 4.2 V charge: not full
    with pytest.raises(SocReferenceError, match="does not start at rest near 4.2 V"):
        ingest(path, options(), name="lg", command="test")


def test_c20_discharge_and_charge_are_both_full_at_their_ends_despite_a_current_offset(
        tmp_path):
    path = tmp_path / "25degC" / "549_C20DisCh.csv"
    written = write_lg(path, c20_test(2.8, measured_offset_a=0.004))
    cycle = ingest(path, options(), name="lg", command="test").dataset.cycles[0]
    assert cycle.meta.load_kind == "ocv"
    reference = cycle.meta.extra["soc_reference"]
    assert reference["kind"] == "end of a CV charge"
    missed = written["ah"][-1] - written["ah"][0]  # the count between two full points
    assert missed > 0.1 and reference["offset_removed"]["count_between_full_points_ah"] == (
        pytest.approx(missed, abs=1e-12))
    phases = c20_test(2.8)
    loaded_s = phases[1].seconds + phases[3].seconds + phases[4].seconds  # both branches
    assert reference["offset_removed"]["current_offset_a"] == pytest.approx(
        missed * 3600 / loaded_s, rel=0.01)
    soc = cycle.frame["soc"].to_numpy()
    # both branches span the whole SOC range on the capacity this test measures
    assert soc[0] == pytest.approx(1.0, abs=1e-9) and soc[-1] == pytest.approx(1.0, abs=1e-9)
    assert soc.min() == pytest.approx(0.0, abs=1e-9)
    assert cycle.meta.capacity_ah == pytest.approx(2.8, rel=1e-3)  # not 2.8 - 0.004 * 18.7 h
    # without the offset nothing is corrected
    write_lg(path, c20_test(2.8))
    clean = ingest(path, options(), name="lg", command="test").dataset.cycles[0]
    assert "offset_removed" not in clean.meta.extra["soc_reference"]
    assert clean.frame["soc"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert clean.meta.capacity_ah == pytest.approx(2.8, abs=1e-4)


def test_a_top_up_before_a_discharge_is_the_full_point(tmp_path):
    path = tmp_path / "0degC" / "585_Dis_0p5C.csv"
    phases = [Phase("CHA", 600.0, 10.0, taper(0.6, 0.05, 600.0), constant(4.19979)),
              Phase("DCH", 5400.0, 60.0, constant(-1.5), ramp(4.05, 2.8, 5400.0)),
              Phase("PAU", 3600.0, 60.0, constant(0.0), ramp(3.0, 3.2, 3600.0))]
    written = write_lg(path, phases, counter_start_ah=0.19)  # counter carried over
    cycle = ingest(path, options(), name="lg", command="test").dataset.cycles[0]
    assert cycle.meta.load_kind == "cc"
    top = int(np.argmax(written["ah"]))
    assert cycle.meta.extra["soc_reference"]["time_s"] == written["time_s"][top]
    expected = 1 + (written["ah"] - written["ah"][top]) / Q_NOMINAL
    np.testing.assert_allclose(cycle.frame["soc"], on_grid(cycle, written, expected), atol=1e-9)
    assert cycle.frame["soc"].iloc[-1] == pytest.approx(1 - 2.25 / Q_NOMINAL, abs=1e-4)


def test_a_charge_file_runs_up_to_full_across_a_counter_restart_and_a_stop_record(tmp_path):
    path = tmp_path / "0degC" / "589_Charge8.csv"
    written = write_lg(path, charge(2.4), stopped=True)  # the STO record reads 0 V
    cycle = ingest(path, options(), name="lg", command="test").dataset.cycles[0]
    extra = cycle.meta.extra
    assert cycle.meta.load_kind == "charge"
    assert extra["stopped_records_dropped"] == 1 and extra["counter_restarts_continued"] == 1
    end = int(np.argmax(written["ah"]))  # the CV end, before the restart to 0
    assert extra["soc_reference"]["time_s"] == written["time_s"][end]
    assert written["ah"][-1] == 0.0
    soc = cycle.frame["soc"].to_numpy()
    assert soc[-1] == pytest.approx(1.0, abs=1e-9)  # the restart did not move SOC
    assert soc[0] == pytest.approx(1 - written["ah"][end] / Q_NOMINAL, abs=1e-9)
    assert written["ah"][end] == pytest.approx(2.4, abs=0.1)


def test_a_counter_restart_between_discharge_and_charge_keeps_soc_continuous(tmp_path):
    path = tmp_path / "n20degC" / "607_Dis_2C.csv"
    phases = [Phase("DCH", 780.0, 60.0, constant(-6.0), ramp(3.3, 2.8, 780.0)),
              *charge(1.3, start_v=3.5)[:-1]]
    phases[1].restarts_counter = True
    written = write_lg(path, phases, counter_start_ah=0.0)
    cycle = ingest(path, options(rate_hz=1 / 60), name="lg", command="test").dataset.cycles[0]
    assert cycle.meta.extra["counter_restarts_continued"] == 1
    count = np.concatenate([written["ah"][:13], written["ah"][13:] + written["ah"][12]])
    expected = 1 + (count - count.max()) / Q_NOMINAL
    np.testing.assert_allclose(cycle.frame["soc"], on_grid(cycle, written, expected), atol=1e-9)
    assert cycle.frame["soc"].min() == pytest.approx(1 - 1.3 / Q_NOMINAL, abs=0.05)


def test_a_regeneration_pulse_held_at_the_charge_voltage_is_not_a_full_charge():
    cutoff = ChargeCutoff(voltage_v=4.2, nominal_ah=3.0)
    t = np.arange(0, 600.0, 0.1)
    held = (t >= 100) & (t < 104)  # 4 s at 4.2 V, the current tapering below C/20
    current = np.where(held, 0.13, -1.0)
    voltage = np.where(held, 4.2, 4.0)
    assert len(cv_charge_ends(t, current, voltage, cutoff)) == 0
    held = (t >= 100) & (t < 280)  # three minutes at 4.2 V is a charge
    current, voltage = np.where(held, 0.13, -1.0), np.where(held, 4.2, 4.0)
    np.testing.assert_array_equal(cv_charge_ends(t, current, voltage, cutoff), [2799])
    slow = np.arange(0, 3600.0, 60.0)  # a 60 s log: one record at the charge voltage
    current = np.where(slow == 600.0, 0.1, 0.0)
    voltage = np.where(slow == 600.0, 4.2, 4.19)
    np.testing.assert_array_equal(cv_charge_ends(slow, current, voltage, cutoff), [])
    current[slow == 540.0] = 0.5  # the record before it charges too
    np.testing.assert_array_equal(cv_charge_ends(slow, current, voltage, cutoff), [10])


@pytest.fixture
def lg_folder(tmp_path: Path) -> Path:
    root = tmp_path / "LG_HG2_data"
    write_lg(root / "25degC" / "549_C20DisCh.csv", c20_test(2.8))
    write_lg(root / "25degC" / "551_Charge2.csv", charge(2.7))
    write_lg(root / "25degC" / "549_Dis_2C.csv",  # logged after its full point: none in it
             [Phase("DCH", 1500.0, 60.0, constant(-6.0), ramp(3.93, 2.8, 1500.0))],
             counter_start_ah=-0.1)
    write_lg(root / "n10degC" / "593_C20DisCh.csv",  # at -10 degC, 4.14 V under load
             c20_test(2.5, start_v=4.14, rest_first=False))
    write_lg(root / "n10degC" / "601_US06.csv", drive())
    return root


def test_a_folder_leaves_out_a_file_without_reference_and_strict_refuses_it(lg_folder):
    result = ingest(lg_folder, options(), name="lg", command="test")
    names = sorted(c.meta.name for c in result.dataset)
    assert names == ["25degC_549_C20DisCh", "25degC_551_Charge2", "n10degC_593_C20DisCh",
                     "n10degC_601_US06"]
    left_out = result.dataset.provenance["left_out"]
    assert [entry["file"] for entry in left_out] == ["25degC/549_Dis_2C.csv"]
    assert "no SOC reference" in left_out[0]["reason"]
    assert any(n.startswith("left out 25degC/549_Dis_2C.csv: no SOC reference")
               for n in result.notes)
    assert any(n.startswith("left out 1 of 5 files") for n in result.notes)
    with pytest.raises(SocReferenceError) as caught:
        ingest(lg_folder, options(strict=True), name="lg", command="test")
    assert caught.value.file is not None and caught.value.file.endswith("549_Dis_2C.csv")
    with pytest.raises(SocReferenceError):  # alone, there is nothing to ingest instead
        ingest(lg_folder / "25degC" / "549_Dis_2C.csv", options(), name="lg", command="test")


def test_capacity_per_temperature_and_the_soc_definition_are_recorded(lg_folder):
    dataset = ingest(lg_folder, options(), name="lg", command="test").dataset
    definition = dataset.provenance["soc_definition"]
    measured = definition["c20_capacity_by_temperature"]
    assert sorted(measured) == ["-10", "25"]
    assert measured["25"]["capacity_ah"] == pytest.approx(2.8, abs=1e-4)
    assert measured["-10"]["capacity_ah"] == pytest.approx(2.5, abs=1e-4)
    assert measured["-10"]["cycles"] == ["n10degC_593_C20DisCh"]
    assert (definition["capacity"], definition["measured_at_c"]) == ("c20-25degC", 25.0)
    assert {c.meta.capacity_ah for c in dataset} == {measured["25"]["capacity_ah"]}
    cold = next(c for c in dataset if c.meta.name == "n10degC_593_C20DisCh")
    assert cold.frame["soc"].min() == pytest.approx(1 - 2.5 / 2.8, abs=0.01)  # never empty
    each = ingest(lg_folder, options(soc_capacity="c20-each-temperature"), name="lg",
                  command="test").dataset
    by_name = {c.meta.name: c for c in each}
    assert by_name["n10degC_601_US06"].meta.capacity_ah == measured["-10"]["capacity_ah"]
    assert by_name["n10degC_593_C20DisCh"].frame["soc"].min() == pytest.approx(0.0, abs=1e-9)
    assert by_name["25degC_551_Charge2"].meta.capacity_ah == measured["25"]["capacity_ah"]
    nominal = ingest(lg_folder, options(soc_capacity="nominal"), name="lg", command="test")
    assert {c.meta.capacity_ah for c in nominal.dataset} == {Q_NOMINAL}
    assert nominal.dataset.provenance["options"]["soc_capacity"] == "nominal"
    with pytest.raises(ConfigError, match="needs a C/20 test"):
        ingest(lg_folder / "n10degC" / "601_US06.csv", options(soc_capacity="c20-25degC"),
               name="lg", command="test")
    with pytest.raises(ConfigError, match="both say what Q is"):
        options(soc_capacity="nominal", capacity_ah=3.0)
    with pytest.raises(ConfigError, match="unknown --soc-capacity"):
        options(soc_capacity="measured")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_cli_names_each_left_out_file_and_strict_is_a_one_line_error(lg_folder, tmp_path,
                                                                     capsys):
    argv = ["data", "ingest", str(lg_folder), "--format", "lg-hg2", "--rate", "0.1"]
    code, _, err = run([*argv, "--out", str(tmp_path / "ds")], capsys)
    assert code == 0
    assert "note: left out 25degC/549_Dis_2C.csv: no SOC reference" in err
    assert "left out 1 of 5 files" in err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["provenance"]["options"]["strict"] is False
    code, _, err = run([*argv, "--out", str(tmp_path / "strict"), "--strict"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert "549_Dis_2C.csv" in lines[0] and "no SOC reference" in lines[0]
    code, _, err = run([*argv, "--out", str(tmp_path / "dup"), "--duplicate-times",
                        "keep-last"], capsys)
    assert code == 2 and "does not apply to --format lg-hg2" in err


@pytest.mark.parametrize(
    ("name", "kind"),
    [("549_C20DisCh", "ocv"), ("551_Cap_1C", "capacity"), ("585_Dis_0p5C", "cc"),
     ("585_Dis_2C", "cc"), ("590_PausCycl", "pulse"), ("551_HPPC", "hppc"),
     ("551_Charge1", "charge"), ("549_Charge", "charge"), ("551_UDDS", "udds"),
     ("551_HWFET", "hwfet"), ("551_LA92", "la92"), ("601_US06", "us06"),
     ("562_Mixed4", "mixed"),
     # the Panasonic names keep theirs
     ("25degC_5Pulse_HPPC", "hppc"), ("3349_Dis1C_1", "capacity"), ("25degC_NN", "nn"),
     ("25degC_Cycle_1", "mixed"), ("C20 OCV Test_C20_25dC", "ocv")],
)
def test_every_test_of_the_layout_has_a_load_kind(name, kind):
    assert load_kind_from_name(name) == kind


@pytest.fixture(scope="module")
def real_lg() -> tuple[Path, object]:
    if not LG_DIR.is_dir():
        pytest.skip(f"real LG 18650HG2 data not present at {LG_DIR}")
    return LG_DIR, ingest(LG_DIR, IngestOptions(fmt="lg-hg2", rate_hz=0.1), name="lg",
                          command="test")


def test_real_lg_folder_ingests_in_one_command(real_lg):
    folder, result = real_lg
    dataset = result.dataset
    files = sorted(folder.rglob("*.csv"))
    left_out = dataset.provenance["left_out"]
    assert len(dataset) + len(left_out) == len(files)
    assert len(left_out) <= 0.05 * len(files)
    assert all("no SOC reference" in entry["reason"] for entry in left_out)
    assert all(c.meta.load_kind is not None for c in dataset)
    assert all(c.meta.extra["soc_reference"]["kind"] for c in dataset)
    capacities = dataset.provenance["soc_definition"]["c20_capacity_by_temperature"]
    ocv = [c for c in dataset if c.meta.load_kind == "ocv"]
    assert len(capacities) == len({c.meta.ambient_c for c in ocv}) == len(ocv)
    q = dataset.provenance["soc_definition"]["q_ah"]
    assert q == capacities["25"]["capacity_ah"] and 2.5 < q < 3.1
    for cycle in ocv:  # discharge from full, charge back to full: both ends near 1
        soc = cycle.frame["soc"]
        assert soc.iloc[-1] == 1.0 and soc.iloc[0] > 0.97, cycle.meta.name
        assert 1 - soc.min() == pytest.approx(
            capacities[f"{cycle.meta.ambient_c:g}"]["capacity_ah"] / q, abs=0.02)
    for cycle in dataset:
        if cycle.meta.load_kind == "charge":
            assert cycle.frame["soc"].max() == 1.0, cycle.meta.name
        if cycle.meta.load_kind in ("us06", "udds", "la92", "hwfet", "mixed"):
            assert cycle.frame["soc"].iloc[0] == pytest.approx(1.0, abs=1e-3), cycle.meta.name


def test_real_lg_soc_follows_the_counter_of_a_cold_drive_cycle(real_lg):
    folder, result = real_lg
    us06 = [c for c in result.dataset if c.meta.load_kind == "us06" and c.meta.ambient_c < 0]
    if not us06:
        pytest.skip("no cold US06 cycle in the shared LG folder")
    q = result.dataset.provenance["soc_definition"]["q_ah"]
    for cycle in us06:  # from full, by the current (interval means of the 0.1 Hz grid)
        soc = cycle.frame["soc"].to_numpy()
        charge = np.cumsum(cycle.frame["current_a"].to_numpy()[1:] * 10.0 / 3600.0)
        np.testing.assert_allclose(soc, 1 + np.concatenate([[0.0], charge]) / q, atol=2e-3)
        assert soc[-1] < 0.6


def test_a_dataset_of_only_unreferenced_files_is_an_error(tmp_path):
    for name in ("549_Dis_0p5C", "549_Dis_2C"):
        write_lg(tmp_path / "25degC" / f"{name}.csv",
                 [Phase("DCH", 1500.0, 60.0, constant(-6.0), ramp(3.93, 2.8, 1500.0))])
    with pytest.raises(DataValidationError, match="none of the 2 files"):
        ingest(tmp_path, options(), name="lg", command="test")


def _slow_test(ocv: Callable[[np.ndarray], np.ndarray], low_soc: float, *, ambient_c: float,
               cv_top: bool = False) -> Cycle:
    """A C/20 discharge from SOC 1 to ``low_soc`` and a charge back (1 min steps), with the
    voltage off the OCV by +-10 mV of polarisation; ``cv_top``: the last 5 % of the charge
    is a CV taper, the voltage held where the constant current left it."""
    import pandas as pd

    from bsoc.data.schema import CycleMeta

    down = np.linspace(1.0, low_soc, 400)
    up = np.linspace(low_soc, 1.0, 400)[1:]
    soc = np.concatenate([down, up])
    current = np.concatenate([np.full(400, -0.15), np.full(399, 0.15)])
    voltage = ocv(soc) + 0.01 * np.sign(current)
    if cv_top:
        taper_part = (current > 0) & (soc > 0.95)
        current[taper_part] = np.linspace(0.14, 0.05, taper_part.sum())
        voltage[taper_part] = ocv(np.array(0.95)) + 0.01
    frame = pd.DataFrame({"time_s": 60.0 * np.arange(len(soc)), "voltage_v": voltage,
                          "current_a": current, "temperature_c": ambient_c, "soc": soc})
    meta = CycleMeta(name=f"c20_{ambient_c:g}", cell="t", nominal_capacity_ah=3.0,
                     ambient_c=ambient_c, load_kind="ocv")
    return Cycle(frame=frame, meta=meta)


def test_ekf_ocv_of_a_cold_c20_test_follows_the_reference_where_it_does_not_reach():
    from bsoc.ekf.ocv import ocv_from_low_rate

    def warm(soc: np.ndarray) -> np.ndarray:
        return 3.3 + 0.7 * soc + 0.15 * soc**2

    def cold(soc: np.ndarray) -> np.ndarray:
        return warm(soc) - 0.05

    grid = np.linspace(0.0, 1.0, 101)
    reference, _ = ocv_from_low_rate([_slow_test(warm, 0.0, ambient_c=25.0)], 101)
    np.testing.assert_allclose(reference, warm(grid), atol=2e-3)
    curve, _ = ocv_from_low_rate([_slow_test(cold, 0.3, ambient_c=-20.0)], 101, reference)
    np.testing.assert_allclose(curve, cold(grid), atol=5e-3)  # below SOC 0.3 too, not flat
    flat, _ = ocv_from_low_rate([_slow_test(cold, 0.3, ambient_c=-20.0)], 101)
    assert np.ptp(flat[:25]) < 1e-3  # what it would be without the reference
    tapered, _ = ocv_from_low_rate([_slow_test(warm, 0.0, ambient_c=25.0, cv_top=True)], 101)
    np.testing.assert_allclose(tapered, warm(grid), atol=8e-3)  # the CV hold is no OCV
