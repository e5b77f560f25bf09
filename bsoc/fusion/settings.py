"""The fusion filter's hyperparameters, and their packing into the compiled filter's buffer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from bsoc.errors import ConfigError
from bsoc.fusion import filter as kernel


@dataclass(frozen=True)
class FusionSettings:
    """What the filter assumes beyond the noise model (tuned by :mod:`bsoc.fusion.fit`).

    ``variance_scale`` multiplies the noise model's variance (the LSTM errs more on cycles it
    was not trained on than on its training split, where the noise model is fitted);
    ``bias_fraction`` of that variance is the slow error state ``e`` with time constant
    ``bias_tau_s``, the rest fast, correlated over ``noise_tau_s``. ``offset_std_c`` is the
    prior std of the current sensor's offset in C (0: no offset state), which random-walks
    by that much every ``offset_walk_h`` hours. ``voltage_factor`` multiplies the EKF's
    voltage noise when the ECM's voltage is a measurement (0: it is not);
    ``voltage_bias_std_v`` is the std of the ECM's slow voltage error, a state with time
    constant ``voltage_bias_tau_s`` (0: no such state, all of the voltage's error is in its
    white noise). ``rc_load_fraction``: at a start under load the RC voltages' prior is
    this share of their steady state for the current (0: zero, as the EKF starts).
    ``lstm_measurement`` False leaves pure coulomb counting (the reference the tests hold
    it to).
    """

    variance_scale: float = 1.0
    bias_fraction: float = 0.5
    bias_tau_s: float = 1000.0
    noise_tau_s: float = 30.0  # correlation time of the fast part of the LSTM's error
    offset_std_c: float = 0.0
    offset_walk_h: float = 4.0
    soc_walk: float = 1e-6  # SOC random walk per sqrt(second): current noise and gain error
    voltage_factor: float = 0.0
    voltage_bias_std_v: float = 0.0
    voltage_bias_tau_s: float = 1800.0
    rc_load_fraction: float = 0.0
    rc_walk_v: float = 1e-3  # RC voltage random walk, V per sqrt(second) (the EKF's)
    rc_std_v: float = 0.02  # initial RC voltage std (the EKF's)
    rest_soc_std: float = 0.1  # SOC std after a start at rest from the voltage (the EKF's)
    init_soc: float = 0.5  # SOC prior of a new stream (without the ECM's voltage)
    init_soc_std: float = 0.3
    gate_sigma: float = 5.0
    lstm_measurement: bool = True

    def validate(self) -> FusionSettings:
        values = asdict(self)
        positive = ("variance_scale", "bias_tau_s", "offset_walk_h", "rc_std_v", "rest_soc_std",
                    "init_soc_std", "gate_sigma", "voltage_bias_tau_s")
        for name, value in values.items():
            if not np.isfinite(float(value)) or float(value) < 0:
                raise ConfigError(f"fusion setting {name}={value} must be finite and >= 0")
            if name in positive and float(value) <= 0:
                raise ConfigError(f"fusion setting {name}={value} must be positive")
        if not 0.0 <= self.bias_fraction < 1.0 or not 0.0 <= self.init_soc <= 1.0:
            raise ConfigError("fusion bias_fraction must be in [0, 1) and init_soc in [0, 1]")
        return self

    def with_values(self, **values: Any) -> FusionSettings:
        return replace(self, **values).validate()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NoiseConstants:
    """Fixed time constants of the noise model's features (recorded with the model)."""

    crate_tau_s: float = 30.0  # average of |I| / Q
    variability_tau_s: float = 60.0  # average of the LSTM's unexplained change
    start_tau_s: tuple[float, float] = (120.0, 1200.0)  # decays of the time since start
    rest_c_rate: float = 0.02  # |I| below this C-rate: at rest (the EKF's threshold)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "start_tau_s": list(self.start_tau_s)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoiseConstants:
        return cls(**{**data, "start_tau_s": tuple(data["start_tau_s"])})


def pack_buffer(
    settings: FusionSettings,
    coef: np.ndarray,
    knots_c: np.ndarray,
    constants: NoiseConstants,
    capacity_ah: float,
    *,
    ecm_block: np.ndarray | None = None,
    voltage_std: np.ndarray | None = None,
) -> np.ndarray:
    """The compiled filter's float64 settings buffer (slots of :mod:`bsoc.fusion.filter`)."""
    if not np.isfinite(capacity_ah) or capacity_ah <= 0:
        raise ConfigError(f"capacity {capacity_ah} Ah must be positive",
                          remedy="give the cell's capacity")
    with_ecm = ecm_block is not None
    knots = np.asarray(knots_c, dtype=np.float64).reshape(-1)
    coef = np.asarray(coef, dtype=np.float64).reshape(-1)
    vstd = np.asarray(voltage_std if with_ecm else [0.0], dtype=np.float64).reshape(-1)
    if len(coef) != len(knots) + kernel.N_EXTRA_FEATURES:
        raise ConfigError(f"noise model has {len(coef)} coefficients for {len(knots)} "
                          "temperature knots", remedy="re-create the model with 'bsoc fuse'")
    header = np.zeros(kernel.SETTINGS_HEADER)
    offset_var = (settings.offset_std_c * capacity_ah) ** 2
    header[kernel.CAPACITY_AH] = capacity_ah
    header[kernel.SOC_WALK_VAR] = settings.soc_walk**2
    header[kernel.OFFSET_VAR0] = offset_var
    header[kernel.OFFSET_WALK_VAR] = offset_var / (3600.0 * settings.offset_walk_h)
    header[kernel.BIAS_TAU_S] = settings.bias_tau_s
    header[kernel.BIAS_FRACTION] = settings.bias_fraction
    header[kernel.VARIANCE_SCALE] = settings.variance_scale
    header[kernel.LSTM_ON] = float(settings.lstm_measurement)
    header[kernel.INIT_SOC] = settings.init_soc
    header[kernel.INIT_SOC_STD] = settings.init_soc_std
    header[kernel.GATE_SIGMA] = settings.gate_sigma
    header[kernel.REST_C_RATE] = constants.rest_c_rate
    header[kernel.CRATE_TAU_S] = constants.crate_tau_s
    header[kernel.VARIABILITY_TAU_S] = constants.variability_tau_s
    header[kernel.START_TAU_1_S], header[kernel.START_TAU_2_S] = constants.start_tau_s
    header[kernel.VOLTAGE_FACTOR] = settings.voltage_factor if with_ecm else 0.0
    header[kernel.RC_WALK_VAR] = settings.rc_walk_v**2
    header[kernel.RC_VAR0] = settings.rc_std_v**2
    header[kernel.REST_SOC_STD] = settings.rest_soc_std
    header[kernel.NOISE_TAU_S] = settings.noise_tau_s
    header[kernel.VBIAS_VAR] = settings.voltage_bias_std_v**2
    header[kernel.VBIAS_TAU_S] = settings.voltage_bias_tau_s
    header[kernel.RC_LOAD_FRACTION] = settings.rc_load_fraction
    voltage_bias = with_ecm and settings.voltage_factor > 0 and settings.voltage_bias_std_v > 0
    header[kernel.N_STATES] = (6 if voltage_bias else 5) if with_ecm else 3
    header[kernel.N_KNOTS] = len(knots)
    header[kernel.KNOTS_AT] = kernel.SETTINGS_HEADER
    header[kernel.N_COEF] = len(coef)
    header[kernel.COEF_AT] = kernel.SETTINGS_HEADER + len(knots)
    header[kernel.N_VSTD] = len(vstd)
    header[kernel.VSTD_AT] = header[kernel.COEF_AT] + len(coef)
    header[kernel.ECM_AT] = header[kernel.VSTD_AT] + len(vstd)
    parts = [header, knots, coef, vstd, ecm_block if with_ecm else np.zeros(0)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float64)
