"""Gentler copies of measured drive cycles: the same drive at a fraction of its current,
slowed down so that it moves the same charge, its voltage moved by what the identified ECM
says that change of load does.

A network reads SOC off the voltage sag a current causes, so it learns only the range of
currents it is shown. On the Panasonic cells the cold test cycles (UDDS at 0, -10 and
-20 degC) draw about half the current of every drive cycle trained on at those
temperatures, run about twice as long to the same end of charge, and the network reads
their smaller sag as more charge. A copy of a training drive at ``scale * I`` and
``1 / scale`` times the duration passes through the same SOC at the same points of the
drive, so the open-circuit voltage is the measured one; the copy keeps the measured
cell's voltage (its nonlinearity, hysteresis, the knee at low charge) and adds only the
ECM's overpotential difference between the two loads at the same SOC::

    t' = t_0 + (t - t_0) / scale,   I'(t') = scale * I(t),   SOC'(t') = SOC(t)
    V'(t') = V(t) + ECM(I', SOC)(t') - ECM(I, SOC)(t)

resampled at the cycle's own sampling interval. The ECM's error (large in the cold) enters
only through how its overpotential differs between the two loads. The temperature is the
measured one: a gentler drive heats the cell less, which this does not model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from bsoc.data.loads import DRIVE_KINDS
from bsoc.data.schema import Cycle
from bsoc.ekf.ecm import EcmTables
from bsoc.errors import ConfigError

# Load kinds that are drives: the simulated ones and the named cycles of real data.
DRIVE_LOAD_KINDS = (*DRIVE_KINDS, "udds", "la92", "hwfet", "us06", "nn")


def rescaled_cycle(cycle: Cycle, tables: EcmTables, scale: float) -> Cycle:
    """``cycle`` at ``scale`` times its current and ``1 / scale`` times its duration."""
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"current scale {scale} must be in (0, 1]",
                          remedy="give a fraction such as 0.5")
    frame = cycle.frame
    time_s = frame["time_s"].to_numpy(dtype=np.float64)
    columns = {name: frame[name].to_numpy(dtype=np.float64)
               for name in ("voltage_v", "current_a", "temperature_c", "soc")}
    step = float(np.median(np.diff(time_s)))
    new_time = time_s[0] + np.arange(0.0, (time_s[-1] - time_s[0]) / scale + 0.5 * step, step)
    source_time = time_s[0] + scale * (new_time - time_s[0])  # where each new sample is
    resampled = {name: np.interp(source_time, time_s, values)
                 for name, values in columns.items()}
    model_before = np.interp(source_time, time_s, tables.terminal_voltage(
        time_s, columns["current_a"], columns["temperature_c"], columns["soc"]))
    current = scale * resampled["current_a"]
    model_after = tables.terminal_voltage(new_time, current, resampled["temperature_c"],
                                          resampled["soc"])
    out = pd.DataFrame({"time_s": new_time,
                        "voltage_v": resampled["voltage_v"] + model_after - model_before,
                        "current_a": current,
                        "temperature_c": resampled["temperature_c"],
                        "soc": resampled["soc"]})
    meta = replace(cycle.meta, name=f"{cycle.meta.name}_x{scale:g}",
                   extra={**cycle.meta.extra, "current_scale": scale,
                          "rescaled_from": cycle.meta.name})
    return Cycle(out, meta)


def gentler_drives(cycles: Sequence[Cycle], tables: EcmTables,
                   scales: Sequence[float]) -> list[Cycle]:
    """A rescaled copy of every drive cycle in ``cycles`` at each of ``scales`` (other loads,
    such as pulse, OCV and capacity tests, are not drives and get none)."""
    return [rescaled_cycle(cycle, tables, scale) for cycle in cycles
            if cycle.meta.load_kind in DRIVE_LOAD_KINDS for scale in scales]
