"""Gentler copies of drive cycles (bsoc.ekf.rescale): on a cell that is exactly the ECM, the
copy is what the cell does at the gentler load; the charge and the SOC path are kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_ekf_synthetic import CAPACITY_AH, make_cycle, true_tables

from bsoc.data.schema import Cycle, coulomb_soc
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.rescale import gentler_drives, rescaled_cycle
from bsoc.errors import ConfigError


@pytest.fixture(scope="module")
def tables() -> EcmTables:
    return true_tables()


def noiseless_drive(tables: EcmTables, ambient_c: float = 10.0) -> Cycle:
    """A drive whose voltage is the ECM's own (no noise), so a copy has a known answer."""
    cycle = make_cycle(tables, "drive", ambient_c, "urban", seed=3)
    frame = cycle.frame.copy()
    frame["voltage_v"] = tables.terminal_voltage(
        frame["time_s"].to_numpy(), frame["current_a"].to_numpy(),
        frame["temperature_c"].to_numpy(), frame["soc"].to_numpy())
    return Cycle(frame, cycle.meta)


def test_scale_one_is_the_cycle_itself(tables: EcmTables) -> None:
    cycle = make_cycle(tables, "drive", 25.0, "urban", seed=1)
    copy = rescaled_cycle(cycle, tables, 1.0)
    for column in ("time_s", "current_a", "temperature_c", "soc"):
        np.testing.assert_array_equal(copy.frame[column].to_numpy(),
                                      cycle.frame[column].to_numpy())
    # V + ECM - ECM: equal to the last bit or two
    np.testing.assert_allclose(copy.frame["voltage_v"].to_numpy(),
                               cycle.frame["voltage_v"].to_numpy(), rtol=0, atol=1e-12)


def test_on_an_ecm_cell_the_copy_is_the_ecm_at_the_gentler_load(tables: EcmTables) -> None:
    cycle = noiseless_drive(tables)
    copy = rescaled_cycle(cycle, tables, 0.5).frame
    time_s, current = copy["time_s"].to_numpy(), copy["current_a"].to_numpy()
    expected = tables.terminal_voltage(time_s, current, copy["temperature_c"].to_numpy(),
                                       copy["soc"].to_numpy())
    np.testing.assert_allclose(copy["voltage_v"].to_numpy(), expected, atol=1e-12)
    # the SOC target is the charge the copy's own current moves (interpolation aside)
    counted = coulomb_soc(time_s, current, CAPACITY_AH, float(copy["soc"].iloc[0]))
    np.testing.assert_allclose(copy["soc"].to_numpy(), counted, atol=2e-4)
    # and a gentler load sags less: the copy's voltage is nearer the OCV on discharge
    ocv = tables.lookup(copy["soc"].to_numpy(), copy["temperature_c"].to_numpy()).ocv
    before = cycle.frame
    ocv_before = tables.lookup(before["soc"].to_numpy(), before["temperature_c"].to_numpy()).ocv
    assert (np.mean(np.abs(copy["voltage_v"].to_numpy() - ocv))
            < 0.7 * np.mean(np.abs(before["voltage_v"].to_numpy() - ocv_before)))


def test_the_copy_moves_the_same_charge_over_twice_the_time(tables: EcmTables) -> None:
    cycle = make_cycle(tables, "drive", 10.0, "urban", seed=2)
    copy = rescaled_cycle(cycle, tables, 0.5)
    assert copy.duration_s == pytest.approx(2 * cycle.duration_s, abs=1.0)
    step = np.diff(copy.frame["time_s"].to_numpy())
    np.testing.assert_allclose(step, 1.0)  # resampled at the cycle's own interval
    assert copy.frame["soc"].iloc[-1] == pytest.approx(cycle.frame["soc"].iloc[-1], abs=1e-3)
    assert copy.frame["soc"].iloc[0] == cycle.frame["soc"].iloc[0]
    assert np.abs(copy.frame["current_a"]).max() == pytest.approx(
        0.5 * np.abs(cycle.frame["current_a"]).max())
    assert copy.meta.name == "drive_x0.5"
    assert copy.meta.extra == {"current_scale": 0.5, "rescaled_from": "drive"}


def test_only_drives_get_copies_one_per_scale(tables: EcmTables) -> None:
    drive = make_cycle(tables, "drive", 25.0, "urban", seed=1)
    ocv = make_cycle(tables, "ocv", 25.0, "ocv", seed=1)
    pulses = replace(drive, meta=replace(drive.meta, name="pulses", load_kind="hppc"))
    nn = replace(drive, meta=replace(drive.meta, name="nn", load_kind="nn"))
    copies = gentler_drives([drive, ocv, pulses, nn], tables, (0.5, 0.75))
    assert [c.meta.name for c in copies] == ["drive_x0.5", "drive_x0.75", "nn_x0.5", "nn_x0.75"]


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, float("nan")])
def test_a_scale_outside_zero_to_one_is_refused(tables: EcmTables, scale: float) -> None:
    cycle = make_cycle(tables, "drive", 25.0, "urban", seed=1)
    with pytest.raises(ConfigError, match="current scale"):
        rescaled_cycle(cycle, tables, scale)
