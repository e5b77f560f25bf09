"""The extended Kalman filter on the ECM: one compiled step for one stream or many.

State ``x = [SOC, V1, V2]`` (the RC voltages of :mod:`bsoc.ekf.ecm`), covariance ``P`` (3x3).
The equations are those of filterpy's ``ExtendedKalmanFilter.predict()`` followed by
``update()`` (Joseph-form covariance), with the textbook names::

    predict:  x = F x + B u                F = diag(1, a1, a2),  u = Ibar (mean current)
              P = F P F' + Q               B = [dt/(3600 Q_ah), R1 (1-a1), R2 (1-a2)]'
                                           Q = diag(q_soc^2, q_rc^2, q_rc^2) * dt
    update:   y = z - h(x)                 h(x) = OCV(SOC, T) + R0 I + V1 + V2
              H = [dOCV/dSOC, 1, 1]
              S = H P H' + R,   K = P H' / S
              x = x + K y
              P = (I - K H) P (I - K H)' + K R K'

Why not filterpy's object itself: it holds one stream and costs tens of microseconds of
Python per step, while the service steps thousands of streams at once. The same equations,
those of :mod:`bsoc.kalman` (shared with the fusion filter), compiled as a loop over streams
(:func:`step_streams`), cost a few microseconds for one stream and a fraction of one per
stream for many; the ECM is read through the one compiled interpolation of
:mod:`bsoc.ekf.lookup`. ``tests/test_ekf_estimator`` checks step by step that they equal
filterpy's ``ExtendedKalmanFilter`` to 1e-10.

Two robustness measures a BMS needs, both keeping the covariance consistent (see
:mod:`bsoc.kalman`): innovation gating at ``gate_sigma`` (a voltage glitch, a current spike;
nothing is ignored outright, so a large but real initial SOC error still pulls the estimate,
more slowly), and SOC projected onto [0, 1] along the covariance.

Bad samples never produce a NaN SOC (documented per case in :func:`ekf_step`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np

from bsoc.data.schema import MAX_CURRENT_C_RATE, VOLTAGE_RANGE_V
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.lookup import ecm_capacity, ecm_point, ocv_inverse, temperature_weight
from bsoc.errors import ConfigError
from bsoc.kalman import predict_covariance, project_bounds, scratch, scratch_size, update_scalar

_MAX_C = MAX_CURRENT_C_RATE

# Layout of one stream's flat state vector. Every slot is always finite, so states batch,
# snapshot and pass the service's finiteness check like any model's: LAST_* mean something
# only once a stream is RUNNING, and CAPACITY 0 stands for "the model's capacity(T)".
SOC, V1, V2 = 0, 1, 2
P_SLICE = slice(3, 12)  # 3x3 covariance, row-major
LAST_TIME, LAST_CURRENT, LAST_TEMPERATURE, CAPACITY, STATUS = 12, 13, 14, 15, 16
STATE_SIZE = 17
# STATUS values: a fresh stream initialises itself from its first usable sample; a preset one
# (initial SOC given) only skips the prediction on its first sample; a running one does both.
FRESH, RUNNING, PRESET = 0.0, 1.0, 2.0


@dataclass(frozen=True)
class NoiseSettings:
    """Process and measurement noise (standard deviations).

    ``soc_std`` and ``rc_std`` are scalars or per-stream (B,) arrays. ``voltage_std`` is the
    voltage "measurement" noise, which in an ECM filter is mostly the *model's* voltage error:
    a scalar, one value per table temperature (N_T,) interpolated in 1/T at each sample's
    temperature like the ECM parameters, or per stream (B, N_T) / (B, 1) for the tuning.
    """

    soc_std: Any  # SOC random walk, per sqrt(second)
    rc_std: Any  # RC voltage random walk, V per sqrt(second)
    voltage_std: Any  # voltage measurement + model error, V
    gate_sigma: float = 5.0

    def validate(self, n_temperatures: int | None = None) -> NoiseSettings:
        """Check values; given the table's temperature count, also the shapes a model allows."""
        for name, value in asdict(self).items():
            if not np.all(np.isfinite(value)) or not np.all(np.asarray(value) > 0):
                raise ConfigError(f"EKF noise setting {name}={value} must be positive and finite")
        shape = np.shape(self.voltage_std)
        if n_temperatures is not None and (np.ndim(self.soc_std) or np.ndim(self.rc_std)):
            raise ConfigError("an EKF model's soc_std and rc_std must be single values")
        if n_temperatures is not None and shape not in ((), (1,), (n_temperatures,)):
            raise ConfigError(
                f"EKF voltage_std has shape {shape}; the ECM has {n_temperatures} temperatures",
                remedy="give one value, or one per table temperature",
            )
        return self

    def to_json(self) -> dict[str, Any]:
        return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InitSettings:
    """How a stream initialises from its first sample (see :func:`ekf_step`)."""

    rest_c_rate: float = 0.02  # |I| below this C-rate: the cell is taken as resting
    rest_soc_std: float = 0.1  # SOC std after a start at rest (the cell may be partly relaxed)
    unknown_soc: float = 0.5  # SOC reported before any usable sample / without a voltage
    unknown_soc_std: float = 0.3  # SOC std after a start under load
    rc_std: float = 0.02  # V, initial RC voltage std

    def validate(self) -> InitSettings:
        values = asdict(self)
        if not all(np.isfinite(v) and v >= 0 for v in values.values()) or not (
            0.0 <= self.unknown_soc <= 1.0
        ):
            raise ConfigError(f"EKF init settings {values} must be finite, >= 0, SOC in [0, 1]")
        return self

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def new_state(
    *,
    soc: float | None = None,
    soc_std: float = 0.3,
    rc_std: float = 0.02,
    capacity_ah: float | None = None,
) -> np.ndarray:
    """A stream's state: fresh, or preset to ``soc`` with std ``soc_std``.

    ``capacity_ah`` fixes this cell's capacity (default: the model's capacity at the cell's
    temperature); it must be positive.
    """
    state = np.zeros(STATE_SIZE)
    if capacity_ah is not None:
        if not np.isfinite(capacity_ah) or capacity_ah <= 0:
            raise ConfigError(
                f"capacity {capacity_ah} Ah must be positive", remedy="give the cell's capacity"
            )
        state[CAPACITY] = capacity_ah
    if soc is not None:
        if not np.isfinite(soc) or not 0.0 <= soc <= 1.0 or soc_std <= 0:
            raise ConfigError(f"initial SOC {soc} must be in [0, 1] with a positive std")
        state[SOC] = soc
        state[P_SLICE] = np.diag([soc_std**2, rc_std**2, rc_std**2]).reshape(-1)
        state[STATUS] = PRESET
    return state


def noise_arrays(tables: EcmTables, noise: NoiseSettings, n_streams: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The noise as the compiled step reads it: SOC and RC random-walk variances per second
    (1,) or (B,), and voltage stds (1, K) or (B, K), K one or the table's temperatures."""
    soc_var = np.ascontiguousarray(np.atleast_1d(noise.soc_std), dtype=np.float64) ** 2
    rc_var = np.ascontiguousarray(np.atleast_1d(noise.rc_std), dtype=np.float64) ** 2
    std = np.asarray(noise.voltage_std, dtype=np.float64)
    per_stream = std.ndim == 2 and std.shape[0] == n_streams and n_streams > 1
    vstd = std.reshape(n_streams if per_stream else 1, -1)
    n_t = len(tables.temperature_c)
    if vstd.shape[1] not in (1, n_t) or (vstd.shape[1] > 1 and n_t < 2):
        raise ConfigError(f"EKF voltage_std has shape {std.shape}; the ECM has {n_t} "
                          "temperatures", remedy="give one value, or one per table temperature")
    for name, values in (("soc_std", soc_var), ("rc_std", rc_var)):
        if len(values) not in (1, n_streams):
            raise ConfigError(f"EKF {name} has {len(values)} values for {n_streams} streams")
    return soc_var, rc_var, np.ascontiguousarray(vstd)


def init_array(init: InitSettings, gate_sigma: float) -> np.ndarray:
    """The start rules and the gate as the compiled step reads them."""
    return np.array([init.rest_c_rate, init.rest_soc_std, init.unknown_soc,
                     init.unknown_soc_std, init.rc_std, gate_sigma], dtype=np.float64)


(_REST_C_RATE, _REST_SOC_STD, _UNKNOWN_SOC, _UNKNOWN_SOC_STD, _RC_STD, _GATE) = range(6)
_V_LOW, _V_HIGH = VOLTAGE_RANGE_V


@numba.njit(cache=True, inline="always")
def voltage_std_at(block: np.ndarray, vstd: np.ndarray, temperature_c: float) -> float:
    """The voltage noise at a temperature: one value, or one per table temperature
    interpolated like the ECM's parameters (linear in 1/T, held at the end rows)."""
    if vstd.shape[0] == 1:
        return vstd[0]
    j, w = temperature_weight(block, temperature_c)
    return vstd[j] * (1 - w) + vstd[j + 1] * w


@numba.njit(cache=True, inline="always")
def _stream_step(block: np.ndarray, soc_var: float, rc_var: float, vstd: np.ndarray,
                 rules: np.ndarray, sample: np.ndarray, state: np.ndarray, new: np.ndarray,
                 work: np.ndarray) -> float:
    """One stream, one sample (the rules of :func:`ekf_step`); returns the SOC."""
    for k in range(STATE_SIZE):
        new[k] = state[k]
    status = state[STATUS]
    running = status == RUNNING
    time_s, voltage, current, temperature = sample[0], sample[1], sample[2], sample[3]
    if not math.isfinite(temperature):
        temperature = state[LAST_TEMPERATURE] if running else math.nan
    temp_ok = math.isfinite(temperature)
    temp_c = temperature if temp_ok else 25.0
    capacity = state[CAPACITY] if state[CAPACITY] > 0 else ecm_capacity(block, temp_c)
    dt = time_s - state[LAST_TIME]
    usable = (math.isfinite(time_s) and math.isfinite(current) and temp_ok
              and abs(current) <= _MAX_C * capacity and (not running or dt > 0))
    if not usable:
        return rules[_UNKNOWN_SOC] if status == FRESH else state[SOC]
    v_ok = math.isfinite(voltage) and _V_LOW <= voltage <= _V_HIGH
    x = work[:3]
    P = work[3:12].reshape(3, 3)
    F = work[12:21].reshape(3, 3)
    q = work[21:24]
    H = work[24:27]
    m1, m2, v1, v2 = scratch(work[27:], 3)
    x[:] = state[:3]
    P.ravel()[:] = state[3:12]
    if status == FRESH:  # the start from the IR-corrected voltage (see ekf_step)
        soc0 = rules[_UNKNOWN_SOC]
        std0 = rules[_UNKNOWN_SOC_STD]
        if v_ok:
            r0 = ecm_point(block, rules[_UNKNOWN_SOC], temp_c)[2]
            soc0 = ocv_inverse(block, voltage - r0 * current, temp_c)
            if abs(current) <= rules[_REST_C_RATE] * capacity:
                std0 = rules[_REST_SOC_STD]
        x[0], x[1], x[2] = soc0, 0.0, 0.0
        P[:, :] = 0.0
        P[0, 0] = std0 * std0
        P[1, 1] = P[2, 2] = rules[_RC_STD] * rules[_RC_STD]
    elif running:  # prediction over (t_prev, t] with parameters at the previous state
        ibar = 0.5 * (state[LAST_CURRENT] + current)
        point = ecm_point(block, x[0], state[LAST_TEMPERATURE])
        a1, a2 = math.exp(-dt / point[5]), math.exp(-dt / point[6])
        x[0] += ibar * dt / (3600.0 * capacity)
        x[1] = a1 * x[1] + point[3] * (1 - a1) * ibar
        x[2] = a2 * x[2] + point[4] * (1 - a2) * ibar
        F[:, :] = 0.0
        F[0, 0], F[1, 1], F[2, 2] = 1.0, a1, a2
        q[0], q[1], q[2] = soc_var * dt, rc_var * dt, rc_var * dt
        predict_covariance(P, F, q, m1)
    project_bounds(x, P, 0, 0.0, 1.0)
    if v_ok and status != FRESH:  # a fresh stream's voltage set its start
        point = ecm_point(block, x[0], temp_c)
        y = voltage - (point[0] + point[2] * current + x[1] + x[2])
        H[0], H[1], H[2] = point[1], 1.0, 1.0
        std = voltage_std_at(block, vstd, temp_c)
        update_scalar(x, P, y, H, std * std, rules[_GATE], m1, m2, v1, v2)
        project_bounds(x, P, 0, 0.0, 1.0)
    new[:3] = x
    new[3:12] = work[3:12]
    new[LAST_TIME] = time_s
    new[LAST_CURRENT] = current
    new[LAST_TEMPERATURE] = temp_c
    new[STATUS] = RUNNING
    return x[0]


_WORK = 27 + scratch_size(3)


@numba.njit(cache=True, nogil=True)
def step_streams(block: np.ndarray, soc_var: np.ndarray, rc_var: np.ndarray, vstd: np.ndarray,
                 rules: np.ndarray, samples: np.ndarray, states: np.ndarray, soc: np.ndarray,
                 new_states: np.ndarray) -> None:
    """B streams, one sample each, into ``soc`` (B,) and ``new_states`` (B, S); the noise
    arrays hold one row for all streams or one per stream (:func:`noise_arrays`)."""
    work = np.empty(_WORK)
    for b in range(samples.shape[0]):
        k = b if soc_var.shape[0] > 1 else 0
        r = b if rc_var.shape[0] > 1 else 0
        v = b if vstd.shape[0] > 1 else 0
        soc[b] = _stream_step(block, soc_var[k], rc_var[r], vstd[v], rules, samples[b],
                              states[b], new_states[b], work)


@numba.njit(cache=True, nogil=True)
def run_sequence(block: np.ndarray, soc_var: np.ndarray, rc_var: np.ndarray, vstd: np.ndarray,
                 rules: np.ndarray, samples: np.ndarray, state: np.ndarray, soc: np.ndarray,
                 std: np.ndarray) -> None:
    """One stream through a whole sequence: SOC and its std (``rules``' unknown std while
    the stream is still fresh) per sample."""
    current, new = state.copy(), state.copy()
    work = np.empty(_WORK)
    for t in range(samples.shape[0]):
        soc[t] = _stream_step(block, soc_var[0], rc_var[0], vstd[0], rules, samples[t], current,
                              new, work)
        std[t] = (rules[_UNKNOWN_SOC_STD] if new[STATUS] == FRESH
                  else math.sqrt(max(new[3], 0.0)))
        current, new = new, current


def ekf_step(
    tables: EcmTables,
    noise: NoiseSettings,
    init: InitSettings,
    samples: np.ndarray,
    states: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance B streams by one sample ``[time_s, voltage_v, current_a, temperature_c]`` each.

    Returns (SOC (B,), new states (B, STATE_SIZE)); the arguments are not modified. The
    noise may differ per stream (the tuning runs many settings at once).

    Bad samples, per stream:

    * time, current not finite, |current| above the plausibility limit of the schema (a sensor
      spike), or time not after the previous sample: the sample is skipped, state unchanged;
    * temperature not finite: the stream's last temperature is used (skipped if it has none);
    * voltage not finite or outside the single-cell range: prediction only (coulomb counting).

    A fresh stream initialises from its first usable sample: SOC = OCV^-1(V - R0 I, T) with
    std ``init.rest_soc_std`` at rest (|I| below ``init.rest_c_rate``), else
    ``init.unknown_soc_std``, RC voltages 0 with std ``init.rc_std``. Why not 50 % under load:
    the IR-corrected voltage is a far better first guess, above all when cold, where the
    filter otherwise spends thousands of seconds pulling SOC from 50 % (measured on the
    training cycles; widening the RC std with R_i * I did not help there). Without a usable
    voltage the start is ``init.unknown_soc`` with the wide std. The voltage a start is read
    from does not update the state as well: used twice, it would shrink P as if measured
    twice, and where V - R0 I lies above OCV(100 %) (a load step the voltage has not followed
    yet) its remainder, projected off SOC > 1, would charge the RC voltages against the
    current's sign, which the filter then unlearns at the cost of SOC.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float64)
    states = np.ascontiguousarray(states, dtype=np.float64)
    soc = np.empty(len(states))
    new = np.empty(states.shape)
    step_streams(tables.block, *noise_arrays(tables, noise, len(states)),
                 init_array(init, float(noise.gate_sigma)), samples, states, soc, new)
    return soc, new
