"""The built-in dataset: a physics-based cell simulated with PyBaMM.

Why physics and not an equivalent circuit: the EKF baseline *is* an equivalent circuit,
so data made by one would flatter it. PyBaMM's SPMe (or DFN) with a lumped thermal model
and the ORegan2022 parameter set (LG M50 21700, 5 Ah) has Arrhenius-type diffusivities,
exchange currents and electrolyte transport, so a cold cell has a higher resistance,
more non-linear polarisation and less usable capacity, and the cell heats itself.

Pipeline for one cycle (:class:`CycleSpec`):
profile knots (:mod:`bsoc.data.loads`) -> PyBaMM solve that cannot step over a knot,
sampled at 1 Hz -> true SOC by coulomb counting the *true* current against the cell's
capacity -> sensor errors on the measured columns (:mod:`bsoc.data.sensors`) ->
:func:`bsoc.data.schema.validate_frame`.

Each cycle depends only on its spec (its own seed), so the result is identical whatever
the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from bsoc.data import loads
from bsoc.data.dataset import Dataset
from bsoc.data.schema import KELVIN, Cycle, CycleMeta, coulomb_soc, validate_frame
from bsoc.data.sensors import SensorModel
from bsoc.errors import ConfigError, SimulationError

SIMULATED_BY = "bsoc data simulate"  # provenance["made_by"] of every simulated dataset
MODELS: tuple[str, ...] = ("SPMe", "DFN")
OCV_C_RATE = 0.05  # C/20 pseudo-OCV discharge
OUTPUT_VARIABLES = (  # only these are computed: evaluating all of them costs more than solving
    "Current [A]",
    "Voltage [V]",
    "Volume-averaged cell temperature [K]",
    "Discharge capacity [A.h]",
    "Average negative particle stoichiometry",
)
BUSY_KNOT_SPACING_S = 20.0  # profiles with knots closer than this on average are "busy"
DEFAULT_MAX_DURATION_S = 4 * 3600.0  # drive and charge cycles of specs without a limit


@dataclass(frozen=True)
class CellConfig:
    """The simulated cell, its model and solver, and its sensors.

    ORegan2022's OCV window is 2.5-4.4 V; we define 100 % SOC at an OCV of 4.2 V (the
    LG M50's rated charge voltage) and keep the upper cut-off a little higher so that a
    full cell can still rest and take small currents without tripping it.
    """

    parameter_set: str = "ORegan2022"
    cell: str = "LG M50 21700 (PyBaMM ORegan2022)"
    model: str = "SPMe"
    thermal: str = "lumped"
    ocv_full_v: float = 4.2
    upper_cutoff_v: float = 4.3
    lower_cutoff_v: float = 2.5
    heat_transfer_w_m2k: float = 25.0  # cell in a ventilated chamber / module
    rtol: float = 1e-4
    atol: float = 1e-6
    max_step_s: float = 2.0  # solver step cap on busy profiles, so no pulse is stepped over
    sensors: SensorModel = field(default_factory=SensorModel)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model '{self.model}'", remedy=f"use one of {MODELS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CycleSpec:
    """Everything that determines one simulated cycle."""

    name: str
    kind: str
    ambient_c: float
    soc0: float
    split: str
    seed: int
    max_duration_s: float | None = None
    c_rate: float | None = None


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


@dataclass
class Trace:
    """True signals of one solved cycle at 1 Hz, plus PyBaMM's own bookkeeping for checks."""

    time_s: np.ndarray
    current_a: np.ndarray  # true, discharge negative
    voltage_v: np.ndarray
    temperature_c: np.ndarray  # volume-averaged cell temperature
    soc: np.ndarray  # coulomb count of the true current
    discharge_capacity_ah: np.ndarray  # PyBaMM's integrated discharge capacity
    stoichiometry_soc: np.ndarray  # from the negative electrode's average lithiation
    termination: str


def _pybamm():
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    import pybamm

    return pybamm


def parameter_values(config: CellConfig, ambient_c: float = 25.0):
    """PyBaMM parameter values of the configured cell at an ambient (= initial) temperature."""
    pybamm = _pybamm()
    values = pybamm.ParameterValues(config.parameter_set)
    values.update(
        {
            "Open-circuit voltage at 100% SOC [V]": config.ocv_full_v,
            "Upper voltage cut-off [V]": config.upper_cutoff_v,
            "Open-circuit voltage at 0% SOC [V]": config.lower_cutoff_v,
            "Lower voltage cut-off [V]": config.lower_cutoff_v,
            "Total heat transfer coefficient [W.m-2.K-1]": config.heat_transfer_w_m2k,
            "Ambient temperature [K]": ambient_c + KELVIN,
            "Initial temperature [K]": ambient_c + KELVIN,
        }
    )
    return values


@dataclass(frozen=True)
class _Window:
    """Electrode stoichiometries at 0 % and 100 % SOC and the negative electrode's capacity."""

    x0: float
    x100: float
    y100: float
    y0: float
    q_negative_ah: float


@lru_cache(maxsize=8)
def _window(config: CellConfig) -> _Window:
    pybamm = _pybamm()
    values = parameter_values(config)
    x0, x100, y100, y0 = pybamm.lithium_ion.get_min_max_stoichiometries(values)
    q_negative = values.evaluate(pybamm.LithiumIonParameters().n.Q_init)
    return _Window(float(x0), float(x100), float(y100), float(y0), float(q_negative))


@lru_cache(maxsize=4)
def _model(name: str, thermal: str):
    """The unprocessed model; each Simulation parameterises its own copy, so it is shared."""
    return getattr(_pybamm().lithium_ion, name)(options={"thermal": thermal})


def cell_capacity_ah(config: CellConfig) -> float:
    """Charge between 0 % and 100 % SOC (OCV at the lower cut-off and at ``ocv_full_v``).

    The initial state of every cycle is set on the same linear stoichiometry scale (as
    PyBaMM's ``initial_soc`` does), so SOC labels are exactly the cell's lithiation state,
    not a capacity measured at one rate and temperature.
    """
    window = _window(config)
    return (window.x100 - window.x0) * window.q_negative_ah


def _set_initial_soc(values, config: CellConfig, soc0: float) -> None:
    """Initial electrode concentrations for ``soc0`` (PyBaMM's ``initial_soc``, without its
    per-call electrode-balance solve)."""
    w = _window(config)
    for electrode, stoichiometry in (
        ("negative", w.x0 + soc0 * (w.x100 - w.x0)),
        ("positive", w.y0 - soc0 * (w.y0 - w.y100)),
    ):
        c_max = values[f"Maximum concentration in {electrode} electrode [mol.m-3]"]
        values[f"Initial concentration in {electrode} electrode [mol.m-3]"] = stoichiometry * c_max


def nominal_capacity_ah(config: CellConfig) -> float:
    return float(parameter_values(config)["Nominal cell capacity [A.h]"])


def build_profile(spec: CycleSpec, capacity_ah: float) -> loads.LoadProfile:
    """The current profile a spec describes (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    if spec.kind in loads.DRIVE_KINDS:
        return loads.drive_profile(
            spec.kind,
            rng,
            capacity_ah=capacity_ah,
            ambient_c=spec.ambient_c,
            soc0=spec.soc0,
            max_duration_s=spec.max_duration_s or DEFAULT_MAX_DURATION_S,
        )
    if spec.kind == "cc":
        return loads.cc_profile(capacity_ah=capacity_ah, c_rate=spec.c_rate, soc0=spec.soc0)
    if spec.kind == "ocv":
        return loads.ocv_profile(capacity_ah=capacity_ah, c_rate=spec.c_rate)
    if spec.kind == "hppc":
        return loads.hppc_profile(
            capacity_ah=capacity_ah, ambient_c=spec.ambient_c, soc0=spec.soc0
        )
    if spec.kind == "charge":
        return loads.charge_profile(
            capacity_ah=capacity_ah,
            ambient_c=spec.ambient_c,
            soc0=spec.soc0,
            max_duration_s=spec.max_duration_s or DEFAULT_MAX_DURATION_S,
        )
    raise ConfigError(f"unknown load kind '{spec.kind}'", remedy=f"use {loads.LOAD_KINDS}")


def simulate_trace(spec: CycleSpec, config: CellConfig | None = None) -> Trace:
    """Solve one cycle with PyBaMM and return its true signals at 1 Hz.

    An adaptive solver can step straight over a short pulse after a long rest. Sparse
    profiles (CC, OCV, HPPC, charge) therefore make it stop at every knot; busy ones (drive
    cycles), where a stop per knot costs more than small steps, cap its step size instead.
    The voltage cut-offs end a cycle early: that is how drive cycles end at an empty cell.
    """
    config = config or CellConfig()
    pybamm = _pybamm()
    capacity = cell_capacity_ah(config)
    profile = build_profile(spec, capacity)
    values = parameter_values(config, spec.ambient_c)
    _set_initial_soc(values, config, spec.soc0)
    # PyBaMM's current is discharge-positive; ours is discharge-negative.
    values["Current function [A]"] = pybamm.Interpolant(
        profile.time_s, -profile.current_a, pybamm.t, interpolator="linear"
    )
    model = _model(config.model, config.thermal)
    busy = len(profile.time_s) > profile.duration_s / BUSY_KNOT_SPACING_S
    solver = pybamm.IDAKLUSolver(
        rtol=config.rtol,
        atol=config.atol,
        options={"dt_max": config.max_step_s if busy else 0.0},
        output_variables=list(OUTPUT_VARIABLES),
    )
    simulation = pybamm.Simulation(model, parameter_values=values, solver=solver)
    stops = np.array([0.0, profile.duration_s]) if busy else profile.time_s
    grid = np.arange(0.0, profile.duration_s + 1.0)
    try:
        solution = simulation.solve(t_eval=stops, t_interp=grid)
    except pybamm.SolverError as error:
        raise SimulationError(
            f"cycle '{spec.name}' ({spec.kind} at {spec.ambient_c:g} degC, SOC0 {spec.soc0:g}): "
            f"PyBaMM solver failed: {str(error).splitlines()[0]}",
            remedy="re-run with another --seed, or --model SPMe if DFN was used",
        ) from None
    time = solution["Time [s]"].entries
    on_grid = np.isclose(time, np.round(time), rtol=0.0, atol=1e-6)
    time = np.round(time[on_grid])
    if len(time) < 2:
        raise SimulationError(
            f"cycle '{spec.name}' hit a voltage cut-off at once ({solution.termination})",
            remedy="start from a higher SOC or lower the current for this temperature",
        )
    current = -solution["Current [A]"].entries[on_grid]
    window = _window(config)
    stoichiometry = solution["Average negative particle stoichiometry"].entries[on_grid]
    return Trace(
        time_s=time,
        current_a=current,
        voltage_v=solution["Voltage [V]"].entries[on_grid],
        temperature_c=solution["Volume-averaged cell temperature [K]"].entries[on_grid] - KELVIN,
        soc=coulomb_soc(time, current, capacity, spec.soc0),
        discharge_capacity_ah=solution["Discharge capacity [A.h]"].entries[on_grid],
        stoichiometry_soc=(stoichiometry - window.x0) / (window.x100 - window.x0),
        termination=str(solution.termination),
    )


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
    pybamm = _pybamm()
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

