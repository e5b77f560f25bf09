"""The built-in PyBaMM dataset: physics checks, determinism, splits, sensors and the CLI.

The tiny simulation runs once per session, through the CLI, and most tests read it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bsoc.cli import app, main
from bsoc.data import loads
from bsoc.data.dataset import Dataset
from bsoc.data.schema import SPLITS
from bsoc.data.sensors import SensorModel, first_order_lag
from bsoc.data.pybamm_cell import (
    CellConfig,
    CycleSpec,
    build_profile,
    cell_capacity_ah,
    simulate_trace,
)
from bsoc.data.simulate import plan_cycles, simulate_cycle, simulate_cycles
from bsoc.errors import ConfigError, SimulationError
from bsoc.profiles import PROFILES, run_profile

CONFIG = CellConfig()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`bsoc data simulate --profile tiny` once: (dataset folder, its JSON summary)."""
    out = tmp_path_factory.mktemp("sim") / "tiny"
    result = CliRunner().invoke(
        app,
        ["data", "simulate", "--profile", "tiny", "--out", str(out), "--seed", "0",
         "--workers", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.fixture(scope="session")
def tiny(tiny_run) -> Dataset:
    return Dataset.load(tiny_run[0])


def _cycle(dataset: Dataset, kind: str, ambient_c: float):
    return next(c for c in dataset if c.meta.load_kind == kind and c.meta.ambient_c == ambient_c)


def test_cli_summary_and_provenance_describe_the_dataset(tiny_run, tiny):
    out, summary = tiny_run
    assert summary["cycles"] == len(tiny) == len(plan_cycles(PROFILES["tiny"].simulation, 0))
    assert summary["rows"] == sum(len(c.frame) for c in tiny)
    assert summary["fingerprint"] == tiny.fingerprint() == Dataset.manifest(out)["fingerprint"]
    prov = tiny.provenance
    assert prov["seed"] == 0 and prov["profile"] == "tiny"
    assert prov["simulator"]["parameter_set"] == "ORegan2022"
    assert prov["simulator"]["model"] == "SPMe"
    assert prov["simulator"]["solver"]["name"] == "IDAKLUSolver"
    assert prov["sensors"] == SensorModel().to_dict()
    assert prov["capacity_ah"] == pytest.approx(cell_capacity_ah(CONFIG))
    assert "--profile tiny" in prov["command"]


def test_splits_are_whole_cycles_with_drive_cycles_only_in_val_and_test(tiny):
    recorded = tiny.provenance["splits"]
    names = [c.meta.name for c in tiny]
    assert sorted(sum(recorded.values(), [])) == sorted(names)  # each cycle in exactly one split
    for cycle in tiny:
        assert cycle.meta.name in recorded[cycle.meta.split]
        assert cycle.meta.load_kind in loads.LOAD_KINDS
        if cycle.meta.split != "train":
            assert cycle.meta.load_kind in loads.DRIVE_KINDS
        if cycle.meta.load_kind in ("ocv", "hppc"):
            assert cycle.meta.split == "train"
    for ambient in PROFILES["tiny"].simulation.temperatures_c:
        for split in SPLITS:
            assert any(c.meta.ambient_c == ambient for c in tiny.split(split))
        ocv = _cycle(tiny, "ocv", ambient)
        assert ocv.soc()[0] == 1.0 and ocv.soc()[-1] < 0.05  # full range for OCV(SOC, T)


def test_planned_scales_cover_temperatures_and_splits():
    for scale, plan in ((name, p.simulation) for name, p in PROFILES.items()):
        specs = plan_cycles(plan, 0)
        assert len({s.name for s in specs}) == len(specs)
        for ambient in plan.temperatures_c:
            here = [s for s in specs if s.ambient_c == ambient]
            assert {"ocv", "hppc"} <= {s.kind for s in here if s.split == "train"}
            assert {"val", "test"} <= {s.split for s in here}
        assert len({s.soc0 for s in specs if s.kind in loads.DRIVE_KINDS}) > 1 or scale == "tiny"
    full = PROFILES["full"].simulation.temperatures_c
    assert len(full) >= 5 and min(full) == -10 and max(full) == 40
    quick = PROFILES["quick"].simulation
    assert plan_cycles(quick, 3) == plan_cycles(quick, 3)
    assert plan_cycles(quick, 3) != plan_cycles(quick, 4)
    with pytest.raises(ConfigError, match="tiny"):
        run_profile("huge")


def _short_spec(ambient_c: float, kind: str = "urban", soc0: float = 0.8) -> CycleSpec:
    return CycleSpec(f"t_{kind}_{ambient_c:g}", kind, ambient_c, soc0, "train", seed=7,
                     max_duration_s=300.0)


def test_true_soc_agrees_with_pybamm_discharge_capacity_and_lithiation():
    spec = _short_spec(0.0)
    trace = simulate_trace(spec, CONFIG)
    capacity = cell_capacity_ah(CONFIG)
    from_pybamm = spec.soc0 - trace.discharge_capacity_ah / capacity
    np.testing.assert_allclose(trace.soc, from_pybamm, atol=1e-4)
    np.testing.assert_allclose(trace.soc, trace.stoichiometry_soc, atol=1e-3)
    np.testing.assert_array_equal(trace.time_s, np.arange(len(trace.time_s)))  # 1 Hz
    assert trace.soc[-1] < spec.soc0 - 0.005  # it did discharge


def test_voltage_stays_inside_the_cell_limits(tiny):
    noise = 6 * SensorModel().voltage_noise_v
    for cycle in tiny:
        assert cycle.meta.extra["true_min_voltage_v"] >= CONFIG.lower_cutoff_v - 1e-3
        v = cycle.frame["voltage_v"]
        assert v.min() >= CONFIG.lower_cutoff_v - noise, cycle.meta.name
        assert v.max() <= CONFIG.upper_cutoff_v + noise, cycle.meta.name
    ends = [c.meta.extra["termination"] for c in tiny if c.meta.load_kind in ("ocv", "cc")]
    assert all("Minimum voltage" in e for e in ends)  # CC/OCV discharges end at the cut-off


def _first_pulse_resistance(cycle) -> float:
    """(V before - V after 9 s) / |I| for the first HPPC discharge pulse, measured signals."""
    i = cycle.frame["current_a"].to_numpy()
    v = cycle.frame["voltage_v"].to_numpy()
    k = int(np.flatnonzero(i < -0.5)[0])
    return (v[k - 2] - v[k + 8]) / (i[k - 2] - i[k + 8])


def test_colder_cell_has_higher_resistance_and_less_usable_capacity(tiny):
    r_cold = _first_pulse_resistance(_cycle(tiny, "hppc", 0.0))
    r_warm = _first_pulse_resistance(_cycle(tiny, "hppc", 25.0))
    assert r_warm > 0.01  # ohms for a 5 Ah cell: a real voltage drop, not noise
    assert r_cold > 1.5 * r_warm
    ends = {}
    for ambient in (0.0, 25.0):
        spec = CycleSpec(f"cc1C_{ambient:g}", "cc", ambient, 1.0, "train", seed=1, c_rate=1.0)
        ends[ambient] = simulate_trace(spec, CONFIG).soc[-1]  # SOC left at the cut-off
    assert ends[0.0] > ends[25.0] + 0.03


def test_same_seed_gives_identical_tables_whatever_the_worker_count(tiny):
    specs = plan_cycles(PROFILES["tiny"].simulation, 0)
    shortest = sorted(specs, key=lambda s: len(tiny.cycles[specs.index(s)].frame))[:2]
    again = simulate_cycles(shortest, CONFIG, workers=2)
    for spec, cycle in zip(shortest, again, strict=True):
        stored = next(c for c in tiny if c.meta.name == spec.name)
        pd.testing.assert_frame_equal(cycle.frame, stored.frame, check_exact=True)
    other = simulate_cycle(replace(shortest[0], seed=shortest[0].seed + 1), CONFIG)
    assert not other.frame.equals(again[0].frame)


def test_profiles_are_deterministic_whole_second_knots_and_derated_when_cold():
    capacity = cell_capacity_ah(CONFIG)
    for kind in loads.LOAD_KINDS:
        spec = CycleSpec("p", kind, 25.0, 1.0, "train", seed=5, max_duration_s=3600.0,
                         c_rate=1.0 if kind == "cc" else 0.05)
        a, b = build_profile(spec, capacity), build_profile(spec, capacity)
        np.testing.assert_array_equal(a.current_a, b.current_a)
        assert a.time_s[0] == 0 and np.all(np.diff(a.time_s) >= 1)
        np.testing.assert_array_equal(a.time_s, np.round(a.time_s))
        grid = np.arange(a.duration_s + 1)
        soc = 1.0 + np.cumsum(a.sample(grid)) / 3600.0 / capacity
        assert soc.max() <= 1.0 + 1e-9  # no regen into a full cell
    peaks = {}
    for ambient in (-10.0, 25.0):
        spec = CycleSpec("p", "aggressive", ambient, 0.8, "train", seed=5, max_duration_s=1800.0)
        current = build_profile(spec, capacity).current_a
        peaks[ambient] = (-current.min(), current.max())
    assert peaks[-10.0][0] < 0.5 * peaks[25.0][0] and peaks[-10.0][1] < 0.2 * peaks[25.0][1]


def test_sensor_model_changes_only_what_it_says():
    t = np.arange(600.0)
    true_i = np.where(t < 300, -5.0, 2.0)
    true_v = np.full_like(t, 3.7)
    true_t = np.where(t < 100, 20.0, 30.0)
    v, i, temp, draws = SensorModel().apply(t, true_v, true_i, true_t, np.random.default_rng(0))
    slope, intercept = np.polyfit(true_i, i, 1)
    assert slope == pytest.approx(draws["current_gain"], abs=2e-3)
    assert intercept == pytest.approx(draws["current_offset_a"], abs=2e-3)
    assert np.std(v - true_v) == pytest.approx(0.002, rel=0.15)
    perfect = SensorModel(0, 0, 0, 0, 0, 0, 0)
    out = perfect.apply(t, true_v, true_i, true_t, np.random.default_rng(0))
    for measured, true in zip(out[:3], (true_v, true_i, true_t), strict=True):
        np.testing.assert_array_equal(measured, true)
    lagged = first_order_lag(t, true_t, 30.0)
    assert lagged[100] == 20.0
    assert lagged[130] == pytest.approx(20.0 + 10.0 * (1 - np.exp(-1.0)), abs=1e-9)


def test_solver_failure_becomes_simulation_error_with_remedy(monkeypatch):
    import pybamm

    def fail(*args, **kwargs):
        raise pybamm.SolverError("IDA failed at t=12")

    monkeypatch.setattr(pybamm.Simulation, "solve", fail)
    with pytest.raises(SimulationError, match="another --seed") as error:
        simulate_trace(_short_spec(25.0), CONFIG)
    assert "t_urban_25" in str(error.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--profile", "huge"], "unknown --profile"), (["--model", "P2D"], "unknown model")],
)
def test_cli_bad_options_exit_2(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as done:
        main(["data", "simulate", "--out", str(tmp_path / "x"), "--workers", "1", *args])
    assert done.value.code == 2
    assert needle in capsys.readouterr().err


def test_cli_refuses_to_overwrite_without_force(tiny_run, capsys):
    out, summary = tiny_run
    with pytest.raises(SystemExit) as done:
        main(["data", "simulate", "--profile", "tiny", "--out", str(out)])
    assert done.value.code == 2
    assert "--force" in capsys.readouterr().err
    assert Dataset.manifest(out)["fingerprint"] == summary["fingerprint"]  # untouched
