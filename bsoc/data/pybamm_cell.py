"""The simulated cell: PyBaMM's model of an LG M50, its parameters, and one cycle solved.

Why physics and not an equivalent circuit: the EKF baseline *is* an equivalent circuit,
so data made by one would flatter it. PyBaMM's SPMe (or DFN) with a lumped thermal model
and the ORegan2022 parameter set (LG M50 21700, 5 Ah) has Arrhenius-type diffusivities,
exchange currents and electrolyte transport, so a cold cell has a higher resistance,
more non-linear polarisation and less usable capacity, and the cell heats itself.

One cycle (:class:`CycleSpec`): load profile knots (:mod:`bsoc.data.loads`) -> PyBaMM
solve that cannot step over a knot, sampled at 1 Hz -> true SOC by coulomb counting the
*true* current against the cell's capacity (:func:`simulate_trace`). Sensors, validation
and whole datasets are :mod:`bsoc.data.simulate`'s.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from bsoc.data import loads
from bsoc.data.schema import KELVIN, coulomb_soc
from bsoc.data.sensors import SensorModel
from bsoc.errors import ConfigError, SimulationError

MODELS: tuple[str, ...] = ("SPMe", "DFN")
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


def import_pybamm():
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    import pybamm

    return pybamm


def parameter_values(config: CellConfig, ambient_c: float = 25.0):
    """PyBaMM parameter values of the configured cell at an ambient (= initial) temperature."""
    pybamm = import_pybamm()
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
    pybamm = import_pybamm()
    values = parameter_values(config)
    x0, x100, y100, y0 = pybamm.lithium_ion.get_min_max_stoichiometries(values)
    q_negative = values.evaluate(pybamm.LithiumIonParameters().n.Q_init)
    return _Window(float(x0), float(x100), float(y100), float(y0), float(q_negative))


@lru_cache(maxsize=4)
def _model(name: str, thermal: str):
    """The unprocessed model; each Simulation parameterises its own copy, so it is shared."""
    return getattr(import_pybamm().lithium_ion, name)(options={"thermal": thermal})


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
    pybamm = import_pybamm()
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
