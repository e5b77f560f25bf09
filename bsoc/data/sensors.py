"""What a battery management system's sensors make of the true cell signals.

Only the *measured* columns (voltage, current, temperature) pass through here; the SOC
label is computed from the true current before any of this. Per cycle, the current sensor
gets one offset and one gain error (drawn from the cycle's seed), as a real shunt
amplifier has after calibration; noise is white; the temperature sensor is a first-order
lag (a thermocouple taped to the can) plus noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SensorModel:
    """Sensor error settings; all standard deviations, applied per sample or per cycle."""

    voltage_noise_v: float = 0.002  # per sample
    voltage_resolution_v: float = 0.001  # ADC step the reading is rounded to
    current_noise_a: float = 0.01  # per sample
    current_offset_sd_a: float = 0.02  # per cycle
    current_gain_sd: float = 0.005  # per cycle, relative
    temperature_noise_c: float = 0.2  # per sample
    temperature_lag_s: float = 30.0  # first-order time constant

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(
        self,
        time_s: np.ndarray,
        voltage_v: np.ndarray,
        current_a: np.ndarray,
        temperature_c: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """Measured (voltage, current, temperature) and the per-cycle errors drawn."""
        n = len(time_s)
        offset = float(rng.normal(0.0, self.current_offset_sd_a))
        gain = float(1.0 + rng.normal(0.0, self.current_gain_sd))
        voltage = voltage_v + rng.normal(0.0, self.voltage_noise_v, n)
        if self.voltage_resolution_v > 0:
            voltage = np.round(voltage / self.voltage_resolution_v) * self.voltage_resolution_v
        current = gain * current_a + offset + rng.normal(0.0, self.current_noise_a, n)
        temperature = first_order_lag(time_s, temperature_c, self.temperature_lag_s)
        temperature = temperature + rng.normal(0.0, self.temperature_noise_c, n)
        draws = {"current_offset_a": offset, "current_gain": gain}
        return voltage, current, temperature, draws


def first_order_lag(time_s: np.ndarray, signal: np.ndarray, tau_s: float) -> np.ndarray:
    """Exact discretisation of ``tau dy/dt = x - y`` with x held over each step, y0 = x0."""
    if tau_s <= 0:
        return signal.astype(np.float64, copy=True)
    alpha = 1.0 - np.exp(-np.diff(time_s) / tau_s)
    out = np.empty(len(signal), dtype=np.float64)
    out[0] = signal[0]
    for k in range(1, len(signal)):
        out[k] = out[k - 1] + alpha[k - 1] * (signal[k - 1] - out[k - 1])
    return out
