"""OCV(SOC) from training data: from low-rate tests where there are some, else from drives.

From the low-rate cycles (load kind :data:`~bsoc.data.schema.OCV_LOAD_KIND`) of a
temperature: voltage binned by SOC per branch (its constant-current part); with a charge and
a discharge branch the OCV is their mean (IR drop and hysteresis cancel), where only one
branch covers a SOC range it is shifted by the half-gap nearest to it, and SOC that a
temperature's test does not reach follows the reference temperature's curve. A
single-branch curve keeps its IR drop until the resistances are known
(:func:`ir_corrected`). Without any low-rate cycle a pseudo-OCV (voltage minus an initial
``R0 I``, binned by SOC) is the starting point.

A table row is ``OCV(s) = curve(1 - k (1 - s)) + D(s)`` (:func:`ocv_row`): ``k`` absorbs the
capacity convention between the low-rate test and the drive data, ``D`` a small correction
(mean hysteresis offset, entropic change); :mod:`bsoc.ekf.ecm_fit` fits both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from bsoc.data.schema import Cycle
from bsoc.errors import ConfigError


def binned(soc: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``value`` per SOC bin of a uniform n-point grid; NaN where a bin is empty."""
    index = np.clip(np.rint(soc * (n - 1)).astype(int), 0, n - 1)
    counts = np.bincount(index, minlength=n)
    sums = np.bincount(index, weights=value, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def filled(values: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Fill NaN entries by linear interpolation; beyond the ends constant, or following
    ``base`` shifted to meet the last value (the shape of another temperature's curve)."""
    ok = np.isfinite(values)
    positions = np.arange(len(values))
    result = np.interp(positions, positions[ok], values[ok])
    if base is None:
        return result
    first, last = positions[ok][[0, -1]]
    below, above = positions < first, positions > last
    result[below] = base[below] + (values[first] - base[first])
    result[above] = base[above] + (values[last] - base[last])
    return result


def monotone(ocv: np.ndarray) -> np.ndarray:
    """Make an OCV curve strictly increasing (by at most 10 uV) so its inverse is unique."""
    return np.maximum.accumulate(ocv) + 1e-5 * np.linspace(0.0, 1.0, len(ocv))


def ocv_from_low_rate(
    cycles: Sequence[Cycle], n_points: int, base: np.ndarray | None = None
) -> tuple[np.ndarray, float | None]:
    """OCV on a uniform SOC grid from low-rate cycles, and the branch current if single-branch.

    Returns ``(ocv, None)`` when charge and discharge branches were averaged, else
    ``(ocv, mean current)`` so that the caller can remove the IR drop later. A branch is its
    constant-current part (at least 80 % of the branch's median current): the taper of a CV
    charge holds the voltage at the limit while SOC still rises. SOC the cycles do not reach
    (a cold C/20 test on the 25 degC capacity stops short of 0) follows ``base`` (another
    temperature's curve) where given, else the nearest value.
    """
    branches: dict[int, list[tuple[np.ndarray, float]]] = {-1: [], 1: []}
    for cycle in cycles:
        frame = cycle.frame
        current = frame["current_a"].to_numpy()
        for sign in (-1, 1):
            branch = sign * current > 1e-6
            if not branch.any():
                continue
            mask = branch & (sign * current >= 0.8 * np.median(sign * current[branch]))
            if mask.sum() >= 10:
                curve = binned(
                    frame["soc"].to_numpy()[mask], frame["voltage_v"].to_numpy()[mask], n_points
                )
                branches[sign].append((curve, float(current[mask].mean())))
    with warnings.catch_warnings():  # SOC bins no cycle reaches stay NaN (filled below)
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {
            sign: (np.nanmean([c for c, _ in found], axis=0), float(np.mean([i for _, i in found])))
            for sign, found in branches.items()
            if found
        }
    if not means:
        raise ConfigError(
            "the low-rate ('ocv') cycles carry no usable current",
            remedy="check their current column, or drop them to fit the OCV from drive data",
        )
    if len(means) == 1:
        ((curve, current),) = means.values()
        return monotone(filled(curve, base)), current
    discharge, charge = means[-1][0], means[1][0]
    half_gap = filled((charge - discharge) / 2.0)
    ocv = np.where(np.isfinite(discharge), discharge + half_gap, charge - half_gap)
    return monotone(filled(ocv, base)), None


def pseudo_ocv(soc: Sequence[np.ndarray], voltage_minus_ir: Sequence[np.ndarray],
               n_points: int) -> np.ndarray:
    """The OCV read off drive data: ``V - R0 I`` binned by SOC (no low-rate test to go by)."""
    return monotone(filled(binned(np.concatenate(soc), np.concatenate(voltage_minus_ir),
                                  n_points)))


def ocv_row(curve: np.ndarray, k: float, correction: np.ndarray | None = None) -> np.ndarray:
    """``curve(1 - k (1 - s)) + D(s)`` on the curve's grid, strictly increasing; ``D`` is given
    at its own uniform nodes."""
    soc = np.linspace(0.0, 1.0, len(curve))
    row = np.interp(np.clip(1.0 - k * (1.0 - soc), 0.0, 1.0), soc, curve)
    if correction is not None:
        row = row + np.interp(soc, np.linspace(0.0, 1.0, len(correction)), correction)
    return monotone(row)


def ir_corrected(curve: np.ndarray, dc_resistance: np.ndarray, current_a: float) -> np.ndarray:
    """A single-branch low-rate curve without its IR drop: ``V - (R0 + R1 + R2) I``, with the
    DC resistance given at its own uniform SOC nodes."""
    soc = np.linspace(0.0, 1.0, len(curve))
    nodes = np.linspace(0.0, 1.0, len(dc_resistance))
    return monotone(curve - np.interp(soc, nodes, dc_resistance) * current_a)
