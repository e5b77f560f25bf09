"""The loads of the simulated cell: drive cycles, CC, HPPC, charging, OCV.

A load kind (:data:`LOAD_KINDS`, a cycle's ``load_kind``) is drawn as a load profile, a
piecewise-linear current ``I(t)`` given by knots on whole seconds, so that
the 1 Hz table contains every knot and trapezoidal coulomb counting on it is exact. A
step is a one-second ramp, which is what a 1 Hz logger sees of a real step anyway. The
knots also steer the solver (see :func:`bsoc.data.pybamm_cell.simulate_trace`): PyBaMM's
adaptive solver would otherwise step straight over a short pulse after a long rest.

Currents are built in C-rate units and scaled by the capacity at the end; discharge is
negative (the bsoc convention). Rates are derated with ambient temperature, as a battery
management system does: cold cells get smaller discharge peaks and little or no charge or
regen current. Regen is also cut while the cell is nearly full (SOC > 95 %).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bsoc.data.schema import OCV_LOAD_KIND

DRIVE_KINDS: tuple[str, ...] = ("urban", "highway", "aggressive", "mixed")
LOAD_KINDS: tuple[str, ...] = (*DRIVE_KINDS, "cc", "hppc", "charge", OCV_LOAD_KIND)

# BMS-style derating: fraction of the warm-cell rate allowed at each ambient temperature.
DERATE_TEMPERATURES_C = (-20.0, -10.0, 0.0, 10.0, 20.0)
DISCHARGE_DERATE = (0.25, 0.4, 0.6, 0.85, 1.0)
CHARGE_DERATE = (0.0, 0.1, 0.3, 0.6, 1.0)
PEAK_DISCHARGE_C = 2.5  # warm-cell peak discharge for drive cycles
PEAK_CHARGE_C = 0.7  # warm-cell peak regen (the LG M50's maximum charge rate)
STANDARD_CHARGE_C = 0.3  # warm-cell charger rate (the LG M50's standard charge)
AUX_LOAD_C = 0.02  # standstill auxiliary load
REGEN_SOC_LIMIT = 0.95


@dataclass(frozen=True)
class RateLimits:
    """Largest discharge, regen and charger C-rates allowed at one ambient temperature."""

    discharge_c: float
    charge_c: float
    standard_charge_c: float


def rate_limits(ambient_c: float) -> RateLimits:
    """Temperature-derated rate limits (linear between the table's temperatures)."""
    discharge = np.interp(ambient_c, DERATE_TEMPERATURES_C, DISCHARGE_DERATE)
    charge = np.interp(ambient_c, DERATE_TEMPERATURES_C, CHARGE_DERATE)
    return RateLimits(
        PEAK_DISCHARGE_C * float(discharge),
        PEAK_CHARGE_C * float(charge),
        STANDARD_CHARGE_C * float(charge),
    )


@dataclass(frozen=True)
class LoadProfile:
    """Knots of a piecewise-linear current: ``time_s`` whole seconds from 0, ``current_a``."""

    kind: str
    time_s: np.ndarray
    current_a: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1])

    def sample(self, time_s: np.ndarray) -> np.ndarray:
        """Current at arbitrary times (linear between knots)."""
        return np.interp(time_s, self.time_s, self.current_a)


class _Builder:
    """Appends knots in C-rate units; every duration is a whole number of seconds >= 1."""

    def __init__(self) -> None:
        self.t: list[float] = [0.0]
        self.c: list[float] = [0.0]

    @property
    def now(self) -> float:
        return self.t[-1]

    def ramp(self, seconds: float, c_rate: float) -> None:
        self.t.append(self.now + max(1.0, float(round(seconds))))
        self.c.append(float(c_rate))

    def hold(self, seconds: float) -> None:
        self.ramp(seconds, self.c[-1])

    def step(self, c_rate: float, seconds: float) -> None:
        """Jump to ``c_rate`` (over one second) and hold it for ``seconds`` in total."""
        self.ramp(1, c_rate)
        if seconds > 1:
            self.hold(seconds - 1)


def _urban(b: _Builder, rng: np.random.Generator, lim: RateLimits, until_s: float) -> None:
    """Stop-and-go micro-trips: idle, accelerate, cruise with wiggles, brake with regen."""
    while b.now < until_s:
        b.step(-AUX_LOAD_C, rng.integers(5, 41))
        b.ramp(rng.integers(3, 9), -rng.uniform(0.4, 0.8) * lim.discharge_c)
        for _ in range(rng.integers(1, 5)):
            b.ramp(rng.integers(4, 16), -rng.uniform(0.08, 0.35) * lim.discharge_c)
        b.ramp(rng.integers(2, 5), 0.0)
        b.ramp(rng.integers(2, 4), rng.uniform(0.3, 0.8) * lim.charge_c)
        b.ramp(rng.integers(3, 8), 0.0)


def _highway(b: _Builder, rng: np.random.Generator, lim: RateLimits, until_s: float) -> None:
    """Sustained cruise with slow load changes, overtaking bursts and light regen."""
    b.ramp(rng.integers(10, 25), -rng.uniform(0.5, 0.8) * lim.discharge_c)
    while b.now < until_s:
        event = rng.uniform()
        if event < 0.1:
            b.ramp(rng.integers(2, 5), -rng.uniform(0.6, 0.9) * lim.discharge_c)
            b.hold(rng.integers(5, 16))
        elif event < 0.18:
            b.ramp(rng.integers(2, 5), rng.uniform(0.1, 0.3) * lim.charge_c)
            b.hold(rng.integers(3, 10))
        else:
            b.ramp(rng.integers(8, 31), -rng.uniform(0.15, 0.45) * lim.discharge_c)


def _aggressive(b: _Builder, rng: np.random.Generator, lim: RateLimits, until_s: float) -> None:
    """US06-like: hard launches to the peak rate, short cruises, strong regen, short stops."""
    while b.now < until_s:
        b.step(-AUX_LOAD_C, rng.integers(2, 16))
        b.ramp(rng.integers(2, 6), -rng.uniform(0.75, 1.0) * lim.discharge_c)
        b.hold(rng.integers(2, 8))
        for _ in range(rng.integers(1, 4)):
            b.ramp(rng.integers(3, 10), -rng.uniform(0.2, 0.7) * lim.discharge_c)
        b.ramp(rng.integers(1, 3), rng.uniform(0.6, 1.0) * lim.charge_c)
        b.hold(rng.integers(2, 6))
        b.ramp(rng.integers(2, 5), 0.0)


_DRIVE_STYLES: dict[str, Callable[[_Builder, np.random.Generator, RateLimits, float], None]] = {
    "urban": _urban,
    "highway": _highway,
    "aggressive": _aggressive,
}


def _mixed(b: _Builder, rng: np.random.Generator, lim: RateLimits, until_s: float) -> None:
    """Alternating 10-20 minute stretches of urban, highway and aggressive driving."""
    while b.now < until_s:
        style = _DRIVE_STYLES[str(rng.choice(list(_DRIVE_STYLES)))]
        style(b, rng, lim, min(until_s, b.now + rng.integers(600, 1201)))


def _limit_regen_near_full(c_rate: np.ndarray, time_s: np.ndarray, soc0: float) -> np.ndarray:
    """Zero the charging knots reached while the predicted SOC is above the regen limit.

    The true current is the profile itself, so SOC is known before simulating; between
    two knots SOC can rise by at most a fraction of a percent, so SOC stays below 1.
    """
    out = c_rate.copy()
    soc = soc0
    for k in range(1, len(out)):
        if out[k] > 0 and soc > REGEN_SOC_LIMIT:
            out[k] = 0.0
        soc += 0.5 * (out[k] + out[k - 1]) * (time_s[k] - time_s[k - 1]) / 3600.0
    return out


def drive_profile(
    kind: str,
    rng: np.random.Generator,
    *,
    capacity_ah: float,
    ambient_c: float,
    soc0: float,
    max_duration_s: float,
) -> LoadProfile:
    """A drive cycle of ``kind`` (one of DRIVE_KINDS), at most ``max_duration_s`` long.

    Generation stops early once the coulomb count says the cell would be empty; the
    simulation normally ends sooner, at the lower voltage cut-off.
    """
    lim = rate_limits(ambient_c)
    b = _Builder()
    style = _mixed if kind == "mixed" else _DRIVE_STYLES[kind]
    chunk_s = 600.0
    while b.now < max_duration_s:
        style(b, rng, lim, min(max_duration_s, b.now + chunk_s))
        t, c = np.asarray(b.t), np.asarray(b.c)
        drawn = -np.sum(0.5 * (c[1:] + c[:-1]) * np.diff(t)) / 3600.0
        if drawn > soc0 + 0.05:
            break
    return _finish(kind, b, capacity_ah, soc0, max_duration_s)


def cc_profile(*, capacity_ah: float, c_rate: float, soc0: float, rest_s: int = 60) -> LoadProfile:
    """Rest, then constant-current discharge at ``c_rate`` until the cell would be empty."""
    b = _Builder()
    b.hold(rest_s)
    b.step(-c_rate, 1.1 * soc0 / c_rate * 3600.0)
    return _finish("cc", b, capacity_ah, soc0, None)


def ocv_profile(*, capacity_ah: float, c_rate: float, rest_s: int = 600) -> LoadProfile:
    """Full slow (C/20) discharge from 100 % SOC: the pseudo-OCV curve for identification."""
    b = _Builder()
    b.hold(rest_s)
    b.step(-c_rate, 1.1 / c_rate * 3600.0)
    return _finish("ocv", b, capacity_ah, 1.0, None)


def hppc_profile(
    *, capacity_ah: float, ambient_c: float, soc0: float, soc_step: float = 0.1, rest_s: int = 900
) -> LoadProfile:
    """HPPC-like test: at each SOC step a 10 s discharge pulse, 40 s rest, 10 s charge pulse,
    then a C/2 discharge of ``soc_step`` and a rest (shortened from the standard hour)."""
    lim = rate_limits(ambient_c)
    pulse_c = min(1.0, lim.discharge_c)
    charge_c = 0.75 * min(1.0, lim.charge_c)
    step_c = min(0.5, lim.discharge_c)
    b = _Builder()
    b.hold(rest_s)
    soc = soc0
    while soc > soc_step / 2:
        b.step(-pulse_c, 10)
        b.step(0.0, 40)
        if charge_c > 0:
            b.step(charge_c, 10)
            b.step(0.0, 40)
        b.step(-step_c, soc_step / step_c * 3600.0)
        b.step(0.0, rest_s)
        soc -= soc_step + (10 * pulse_c - 10 * charge_c) / 3600.0
    return _finish("hppc", b, capacity_ah, soc0, None)


def charge_profile(
    *, capacity_ah: float, ambient_c: float, soc0: float, max_duration_s: float
) -> LoadProfile:
    """Multi-stage CC charge (C/3.3 -> half -> quarter of that, derated when cold) to
    80/90/95 % SOC, then a 10 minute rest. Cut at ``max_duration_s`` (cold charging is slow).

    Faster charging saturates the graphite surface in ORegan2022's SPMe (where a real cell
    would plate lithium) and trips the upper cut-off at mid SOC."""
    lim = rate_limits(ambient_c)
    b = _Builder()
    b.hold(120)
    soc = soc0
    for fraction, target in ((1.0, 0.8), (0.5, 0.9), (0.25, 0.95)):
        rate = fraction * lim.standard_charge_c
        if rate <= 0 or soc >= target:
            continue
        b.step(rate, (target - soc) / rate * 3600.0)
        soc = target
    b.step(0.0, 600)
    return _finish("charge", b, capacity_ah, soc0, max_duration_s)


def _finish(
    kind: str, b: _Builder, capacity_ah: float, soc0: float, max_duration_s: float | None
) -> LoadProfile:
    t = np.asarray(b.t, dtype=np.float64)
    c = np.asarray(b.c, dtype=np.float64)
    if max_duration_s is not None and t[-1] > max_duration_s:
        end = float(round(max_duration_s))
        c_end = float(np.interp(end, t, c))
        keep = t < end
        t, c = np.append(t[keep], end), np.append(c[keep], c_end)
    c = _limit_regen_near_full(c, t, soc0)
    return LoadProfile(kind=kind, time_s=t, current_a=c * capacity_ah)
