"""The built-in dataset: cycles of a physics-based cell (:mod:`bsoc.data.pybamm_cell`).

A run profile's :class:`Scale` plans the cycles (:func:`plan_cycles`); each is solved
(:func:`~bsoc.data.pybamm_cell.simulate_trace`), gets sensor errors on the measured
columns (:mod:`bsoc.data.sensors`) and is validated (:func:`bsoc.data.schema.validate_frame`).

Each cycle depends only on its spec (its own seed), so the result is identical whatever
the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from bsoc.data import loads
from bsoc.data.dataset import Dataset
from bsoc.data.pybamm_cell import (
    BUSY_KNOT_SPACING_S,
    CellConfig,
    CycleSpec,
    cell_capacity_ah,
    import_pybamm,
    nominal_capacity_ah,
    simulate_trace,
)
from bsoc.data.schema import Cycle, CycleMeta, validate_frame
from bsoc.errors import ConfigError

SIMULATED_BY = "bsoc data simulate"  # provenance["made_by"] of every simulated dataset
OCV_C_RATE = 0.05  # C/20 pseudo-OCV discharge


@dataclass(frozen=True)
class Scale:
    """How much to simulate: temperatures and cycles per temperature (one per run profile,
    :mod:`bsoc.profiles`)."""

    temperatures_c: tuple[float, ...]
    train_drives: int
    val_drives: int
    test_drives: int
    cc_rates: tuple[float, ...]
    charges: int
    drive_max_s: float
    charge_max_s: float


DRIVE_SOC0 = (1.0, 0.9, 0.8, 0.7, 0.6)


def simulate_cycle(spec: CycleSpec, config: CellConfig | None = None) -> Cycle:
    """One validated canonical cycle: true SOC, measured voltage/current/temperature."""
    config = config or CellConfig()
    trace = simulate_trace(spec, config)
    rng = np.random.default_rng([spec.seed, 1])  # sensor stream, separate from the profile's
    voltage, current, temperature, draws = config.sensors.apply(
        trace.time_s, trace.voltage_v, trace.current_a, trace.temperature_c, rng
    )
    frame = pd.DataFrame(
        {
            "time_s": trace.time_s,
            "voltage_v": voltage,
            "current_a": current,
            "temperature_c": temperature,
            "soc": trace.soc,
        }
    )
    nominal = nominal_capacity_ah(config)
    frame = validate_frame(frame, file=spec.name, nominal_capacity_ah=nominal)
    meta = CycleMeta(
        name=spec.name,
        cell=config.cell,
        nominal_capacity_ah=nominal,
        ambient_c=spec.ambient_c,
        split=spec.split,
        capacity_ah=cell_capacity_ah(config),
        load_kind=spec.kind,
        extra={
            "soc0": spec.soc0,
            "seed": spec.seed,
            "c_rate": spec.c_rate,
            "max_duration_s": spec.max_duration_s,
            "termination": trace.termination,
            "true_min_voltage_v": float(trace.voltage_v.min()),
            "true_max_temperature_c": float(trace.temperature_c.max()),
            "sensor_errors": draws,
        },
    )
    return Cycle(frame=frame, meta=meta)


def plan_cycles(plan: Scale, seed: int) -> list[CycleSpec]:
    """The cycles of a scale, deterministic in ``seed``.

    Per ambient temperature: train = a C/20 OCV discharge, an HPPC test, CC discharges,
    charges and drive cycles; validation and test = drive cycles only (at least one each),
    so every split covers every temperature. Splits are by whole cycles.
    """
    rng = np.random.default_rng(seed)
    specs: list[CycleSpec] = []

    def add(kind: str, ambient: float, soc0: float, split: str, **kw: Any) -> None:
        index = len(specs)
        cycle_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        name = f"{index:03d}_{kind}_{ambient:g}C_soc{round(soc0 * 100):d}"
        specs.append(CycleSpec(name, kind, ambient, soc0, split, cycle_seed, **kw))

    for ti, ambient in enumerate(plan.temperatures_c):
        add("ocv", ambient, 1.0, "train", c_rate=OCV_C_RATE)
        add("hppc", ambient, 1.0, "train")
        for rate in plan.cc_rates:
            derated = round(rate * loads.rate_limits(ambient).discharge_c / loads.PEAK_DISCHARGE_C, 3)
            add("cc", ambient, float(rng.choice([1.0, 0.9])), "train", c_rate=derated)
        for _ in range(plan.charges):
            add("charge", ambient, round(float(rng.uniform(0.05, 0.4)), 2), "train",
                max_duration_s=plan.charge_max_s)
        for split, count, offset in (
            ("train", plan.train_drives, 0),
            ("val", plan.val_drives, ti),
            ("test", plan.test_drives, ti + 2),
        ):
            for k in range(count):
                kind = loads.DRIVE_KINDS[(k + offset) % len(loads.DRIVE_KINDS)]
                add(kind, ambient, float(rng.choice(DRIVE_SOC0)), split,
                    max_duration_s=plan.drive_max_s)
    return specs


def _worker_init() -> None:
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def simulate_cycles(
    specs: Sequence[CycleSpec],
    config: CellConfig | None = None,
    *,
    workers: int = 1,
    on_cycle: Callable[[Cycle], None] | None = None,
) -> list[Cycle]:
    """Simulate ``specs`` (in-process, or in ``workers`` spawned processes) in plan order.

    ``on_cycle`` is called in the parent as each cycle finishes (for a progress bar).
    """
    config = config or CellConfig()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", remedy="pass --workers 1 or more")
    results: dict[str, Cycle] = {}
    if workers == 1 or len(specs) < 2:
        for spec in specs:
            results[spec.name] = simulate_cycle(spec, config)
            if on_cycle:
                on_cycle(results[spec.name])
    else:
        # Longest first balances the pool; spawn avoids forking a threaded parent.
        ordered = sorted(specs, key=lambda s: -(s.max_duration_s or 0.0))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(simulate_cycle, spec, config) for spec in ordered]
            for future in as_completed(futures):
                cycle = future.result()
                results[cycle.meta.name] = cycle
                if on_cycle:
                    on_cycle(cycle)
    return [results[spec.name] for spec in specs]


def simulate_dataset(
    scale: Scale,
    seed: int = 0,
    config: CellConfig | None = None,
    *,
    profile: str,
    workers: int = 1,
    on_cycle: Callable[[Cycle], None] | None = None,
    command: str | None = None,
) -> Dataset:
    """Plan and simulate a whole dataset of the run profile ``profile`` (its ``scale``); the
    manifest's provenance says how it was made."""
    config = config or CellConfig()
    specs = plan_cycles(scale, seed)
    cycles = simulate_cycles(specs, config, workers=workers, on_cycle=on_cycle)
    return Dataset(
        name=f"sim-{profile}-seed{seed}",
        cycles=cycles,
        provenance=simulation_provenance(profile, scale, seed, config, cycles, command),
    )


def simulation_provenance(
    profile: str, scale: Scale, seed: int, config: CellConfig, cycles: Sequence[Cycle],
    command: str | None,
) -> dict[str, Any]:
    pybamm = import_pybamm()
    splits: dict[str, list[str]] = {}
    for cycle in cycles:
        splits.setdefault(cycle.meta.split, []).append(cycle.meta.name)
    return {
        "made_by": SIMULATED_BY,
        "command": command,
        "profile": profile,
        "seed": seed,
        "scale": asdict(scale),
        "simulator": {
            "pybamm_version": pybamm.__version__,
            "parameter_set": config.parameter_set,
            "model": config.model,
            "thermal": config.thermal,
            "solver": {
                "name": "IDAKLUSolver",
                "rtol": config.rtol,
                "atol": config.atol,
                "max_step_s_busy_profiles": config.max_step_s,
                "busy_knot_spacing_s": BUSY_KNOT_SPACING_S,
            },
            "parameter_changes": {
                "Open-circuit voltage at 100% SOC [V]": config.ocv_full_v,
                "Upper voltage cut-off [V]": config.upper_cutoff_v,
                "Open-circuit voltage at 0% SOC [V]": config.lower_cutoff_v,
                "Lower voltage cut-off [V]": config.lower_cutoff_v,
                "Total heat transfer coefficient [W.m-2.K-1]": config.heat_transfer_w_m2k,
            },
        },
        "cell": config.cell,
        "capacity_ah": cell_capacity_ah(config),
        "soc_definition": "coulomb count of the true current (before sensor errors) against "
        "capacity_ah, from the initial SOC PyBaMM was started at",
        "sampling_hz": 1.0,
        "sensors": config.sensors.to_dict(),
        "rate_derating": {
            "temperatures_c": list(loads.DERATE_TEMPERATURES_C),
            "discharge_fraction": list(loads.DISCHARGE_DERATE),
            "charge_fraction": list(loads.CHARGE_DERATE),
            "peak_discharge_c": loads.PEAK_DISCHARGE_C,
            "peak_charge_c": loads.PEAK_CHARGE_C,
        },
        "splits": splits,
        "cell_hours": round(sum(c.duration_s for c in cycles) / 3600.0, 2),
    }

