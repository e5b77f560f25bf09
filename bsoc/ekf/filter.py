"""The extended Kalman filter on the ECM, vectorised over many streams.

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
Python per step, while the service steps thousands of streams at once. The same equations on
(B, 3) / (B, 3, 3) arrays cost one set of numpy calls for all streams; ``tests/test_ekf_filter``
checks step by step that they equal filterpy's ``ExtendedKalmanFilter`` to 1e-10.

Two robustness measures a BMS needs, both keeping the covariance consistent:

* innovation gating: when the normalised innovation exceeds ``gate_sigma`` (a voltage glitch,
  a current spike), R is inflated for that step so that ``|y| / sqrt(S) = gate_sigma``; the
  Joseph form with that R keeps P valid. Nothing is ever ignored outright, so a large but real
  initial SOC error still pulls the estimate (more slowly) instead of locking the filter out.
* SOC constraint: the state is projected onto SOC in [0, 1] along the covariance (estimate
  projection, Simon 2010, :func:`project_soc`); P is kept, which is conservative since the
  projection can only shrink the error.

Bad samples never produce a NaN SOC (documented per case in :func:`ekf_step`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import MAX_CURRENT_C_RATE, VOLTAGE_RANGE_V
from bsoc.ekf.ecm import EcmTables, temperature_weights
from bsoc.errors import ConfigError

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


def predict(
    x: np.ndarray, P: np.ndarray, f: np.ndarray, bu: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """x = F x + B u, P = F P F' + Q for diagonal F (B, 3) and diagonal Q (B, 3)."""
    x = f * x + bu
    P = P * f[:, :, None] * f[:, None, :]
    P[:, [0, 1, 2], [0, 1, 2]] += q
    return x, P


def update(
    x: np.ndarray,
    P: np.ndarray,
    y: np.ndarray,
    H: np.ndarray,
    r: np.ndarray,
    gate_sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Scalar-measurement update with innovation ``y`` (B,), Jacobian ``H`` (B, 3), noise ``r``.

    Joseph form; R inflated where the normalised innovation exceeds ``gate_sigma``.
    """
    PHt = np.einsum("bij,bj->bi", P, H)  # (B, 3)
    hph = np.einsum("bi,bi->b", H, PHt)
    S = np.maximum(hph + r, y * y / gate_sigma**2)
    r = S - hph
    K = PHt / S[:, None]
    x = x + K * y[:, None]
    IKH = np.eye(3)[None] - K[:, :, None] * H[:, None, :]
    P = IKH @ P @ IKH.transpose(0, 2, 1) + r[:, None, None] * K[:, :, None] * K[:, None, :]
    P = 0.5 * (P + P.transpose(0, 2, 1))
    return x, P


def voltage_variance(tables: EcmTables, voltage_std: Any, temperature_c: np.ndarray) -> np.ndarray:
    """R (B,) at each stream's temperature from a scalar / (N_T,) / (B, 1) / (B, N_T) std."""
    n = len(temperature_c)
    std = np.asarray(voltage_std, dtype=np.float64)
    if std.ndim == 0 or std.shape[-1] == 1:
        return np.broadcast_to(std.reshape(-1) ** 2, (n,))
    j, w = temperature_weights(tables.temperature_c, temperature_c)
    per_stream = np.broadcast_to(std, (n, std.shape[-1]))
    rows = np.arange(n)
    value = per_stream[rows, j] * (1 - w) + per_stream[rows, j + 1] * w
    return value * value


def project_soc(x: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Project the state onto SOC in [0, 1] along the covariance (estimate projection).

    ``x - P e1 (SOC - clip(SOC)) / P_11``: the minimum-variance projection (Simon 2010), so
    the RC voltages move with SOC as their correlation says. Clipping SOC alone would leave
    them where an update towards SOC > 1 put them: on a full cell that repeats every step
    and the RC voltages drift to volts (measured on the Panasonic 25 degC drives).
    """
    excess = x[:, SOC] - np.clip(x[:, SOC], 0.0, 1.0)
    if not excess.any():
        return x
    x = x - P[:, :, SOC] * (excess / P[:, SOC, SOC])[:, None]
    x[:, SOC] = np.clip(x[:, SOC], 0.0, 1.0)  # exact bound despite rounding
    return x


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


def ekf_step(
    tables: EcmTables,
    noise: NoiseSettings,
    init: InitSettings,
    samples: np.ndarray,
    states: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance B streams by one sample ``[time_s, voltage_v, current_a, temperature_c]`` each.

    Returns (SOC (B,), new states (B, STATE_SIZE)); the arguments are not modified.

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
    samples = np.asarray(samples, dtype=np.float64)
    states = np.asarray(states, dtype=np.float64)
    n = len(states)
    time_s, voltage, current, temperature = (samples[:, c] for c in range(4))
    status = states[:, STATUS]
    running = status == RUNNING
    last_temperature = np.where(running, states[:, LAST_TEMPERATURE], np.nan)
    temperature = np.where(np.isfinite(temperature), temperature, last_temperature)
    temp_ok = np.isfinite(temperature)
    temp_c = np.where(temp_ok, temperature, 25.0)
    capacity = np.where(states[:, CAPACITY] > 0, states[:, CAPACITY], tables.capacity(temp_c))
    with np.errstate(invalid="ignore"):
        dt = time_s - states[:, LAST_TIME]
        usable = (
            np.isfinite(time_s)
            & np.isfinite(current)
            & temp_ok
            & (np.abs(current) <= MAX_CURRENT_C_RATE * capacity)
            & (~running | (dt > 0))
        )
        v_ok = (
            np.isfinite(voltage) & (voltage >= VOLTAGE_RANGE_V[0]) & (voltage <= VOLTAGE_RANGE_V[1])
        )
    current_c = np.where(usable, current, 0.0)
    dt = np.where(usable & running, dt, 0.0)

    x = states[:, :3].copy()
    P = states[:, P_SLICE].reshape(n, 3, 3).copy()

    # Prediction over (t_prev, t] with parameters at the previous state.
    prev_temp = np.where(running, states[:, LAST_TEMPERATURE], temp_c)
    ibar = np.where(running, 0.5 * (states[:, LAST_CURRENT] + current_c), 0.0)
    prev = tables.lookup(x[:, SOC], prev_temp)
    a1, a2 = np.exp(-dt / prev.tau1), np.exp(-dt / prev.tau2)
    f = np.stack([np.ones(n), a1, a2], axis=1)
    bu = np.stack(
        [ibar * dt / (3600.0 * capacity), prev.r1 * (1 - a1) * ibar, prev.r2 * (1 - a2) * ibar],
        axis=1,
    )
    q = np.stack(
        [
            np.broadcast_to(noise.soc_std**2 * dt, (n,)),
            np.broadcast_to(noise.rc_std**2 * dt, (n,)),
            np.broadcast_to(noise.rc_std**2 * dt, (n,)),
        ],
        axis=1,
    )
    x_pred, P_pred = predict(x, P, f, bu, q)

    # Initialisation of fresh streams from this sample.
    fresh = status == FRESH
    if fresh.any():
        rest = v_ok & (np.abs(current_c) <= init.rest_c_rate * capacity)
        guess = tables.lookup(np.full(n, init.unknown_soc), temp_c)
        soc0 = np.where(
            v_ok,
            tables.ocv_inverse(np.where(v_ok, voltage - guess.r0 * current_c, 3.7), temp_c),
            init.unknown_soc,
        )
        std0 = np.where(rest, init.rest_soc_std, init.unknown_soc_std)
        x_init = np.stack([soc0, np.zeros(n), np.zeros(n)], axis=1)
        P_init = np.zeros((n, 3, 3))
        P_init[:, 0, 0] = std0**2
        P_init[:, 1, 1] = P_init[:, 2, 2] = init.rc_std**2
        x_pred = np.where(fresh[:, None], x_init, x_pred)
        P_pred = np.where(fresh[:, None, None], P_init, P_pred)
    x_pred = project_soc(x_pred, P_pred)

    # Voltage update at the predicted state.
    now = tables.lookup(x_pred[:, SOC], temp_c)
    y = np.where(v_ok, voltage, 0.0) - (
        now.ocv + now.r0 * current_c + x_pred[:, V1] + x_pred[:, V2]
    )
    H = np.stack([now.docv, np.ones(n), np.ones(n)], axis=1)
    r = voltage_variance(tables, noise.voltage_std, temp_c)
    measured = v_ok & (status != FRESH)  # a fresh stream's voltage set its start
    x_post, P_post = update(x_pred, P_pred, np.where(measured, y, 0.0), H, r, noise.gate_sigma)
    x_post = np.where(measured[:, None], x_post, x_pred)
    P_post = np.where(measured[:, None, None], P_post, P_pred)
    x_post = project_soc(x_post, P_post)

    new = states.copy()
    new[usable, :3] = x_post[usable]
    new[usable, P_SLICE] = P_post[usable].reshape(-1, 9)
    new[usable, LAST_TIME] = time_s[usable]
    new[usable, LAST_CURRENT] = current_c[usable]
    new[usable, LAST_TEMPERATURE] = temp_c[usable]
    new[usable, STATUS] = RUNNING
    soc = np.where(new[:, STATUS] == FRESH, init.unknown_soc, new[:, SOC])
    return soc, new
