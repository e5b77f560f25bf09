"""Sensor-error augmentation of training inputs: offsets and noise on V, I and T, never on SOC.

A BMS reads its cell through a voltage divider, a shunt or Hall sensor and a thermistor,
each with an offset that drifts slowly and noise on every sample. A network trained on one
tester's clean channels learns that tester; one trained on inputs shifted by plausible
sensor errors, with the true SOC kept as the target, learns to read SOC through them
(Vidal, Kollmeyer et al. 2020 used about +-4 mV, +-110 mA and +-5 degC on the Panasonic
cell). Offsets are drawn once per training window (a sensor's bias is constant over a
drive), noise once per sample. The function sees only the features: the targets cannot be
touched by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bsoc.errors import ConfigError


@dataclass(frozen=True)
class SensorAugmentation:
    """Per-window offsets (uniform in +-value) and per-sample noise (Gaussian, 1 sigma)
    in physical units, in the feature order voltage_v, current_a, temperature_c."""

    voltage_offset_v: float = 0.0
    current_offset_a: float = 0.0
    temperature_offset_c: float = 0.0
    voltage_noise_v: float = 0.0
    current_noise_a: float = 0.0
    temperature_noise_c: float = 0.0

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 0:
            raise ConfigError(f"sensor augmentation amplitudes must be >= 0: {self}",
                              remedy="give offsets and noise levels as positive magnitudes")

    @property
    def enabled(self) -> bool:
        return max(asdict(self).values()) > 0

    def apply(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``features`` (N, L, 3) -> a new array with each window's offsets and noise added."""
        if not self.enabled:
            return features
        count = features.shape[0]
        offsets = np.array([self.voltage_offset_v, self.current_offset_a,
                            self.temperature_offset_c], np.float32)
        noise = np.array([self.voltage_noise_v, self.current_noise_a,
                          self.temperature_noise_c], np.float32)
        drawn = rng.uniform(-1.0, 1.0, size=(count, 1, 3)).astype(np.float32) * offsets
        jitter = rng.standard_normal(features.shape, dtype=np.float32) * noise
        return features + drawn + jitter

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
