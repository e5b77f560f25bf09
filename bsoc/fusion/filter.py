"""The fusion filter: coulomb counting corrected by the LSTM's SOC (and optionally the
terminal voltage through the ECM), compiled, one stream or many.

State ``x = [SOC, b, e]`` (+ ``[V1, V2]`` with the ECM), covariance ``P``:

* ``SOC`` follows the measured current minus the current sensor's offset ``b`` (A), a slow
  random walk: ``SOC_k = SOC_{k-1} + (Ibar_k - b) dt / (3600 Q)``, Ibar the interval's mean
  current (trapezoid, as the reference SOC is counted);
* ``e`` is the LSTM's slowly varying error: ``e = sqrt(rho) sigma u`` with ``u`` a unit
  first-order Gauss-Markov process (``u_k = phi u_{k-1} + w``, ``phi = exp(-dt / tau_e)``)
  and ``sigma^2`` the LSTM's error variance the noise model (:mod:`bsoc.fusion.noise`)
  predicts at this sample. So ``e_k = phi (sigma_k / sigma_{k-1}) e_{k-1} + w_k`` with
  ``Var w_k = rho sigma_k^2 (1 - phi^2)``: the error keeps its sign for about ``tau_e`` and
  shrinks or grows as the noise model says its size does (its large start error fades as
  the network settles, its drift at rest grows), instead of lingering for ``tau_e``;
* the LSTM's output is the measurement ``z = SOC + e + v``; ``v`` is the fast part of its
  error, of variance ``(1 - rho) sigma^2`` but correlated over ``tau_v`` (tens of seconds:
  the estimate moves with the current's pulses), so it enters as the white noise that
  carries as much information, ``R = (1 - rho) sigma^2 * 2 tau_v / dt``: taken as white at
  its own variance, one minute of the same error would count as sixty measurements;
* with the ECM, ``V1, V2`` are the RC voltages and the terminal voltage
  ``OCV(SOC, T) + R0 (I - b) + V1 + V2 (+ d)`` is a second measurement, as in the EKF
  (:mod:`bsoc.ekf.filter`);
* optionally ``d``, the ECM's slow voltage error (a first-order Gauss-Markov process of
  std ``sigma_d``, time constant ``tau_d``): the circuit is wrong in the cold by tens of
  millivolts over a whole drive, which as white noise must be weighted so little that
  the voltage cannot even set a start taken under load. With ``d`` the first minutes of
  voltage pin the SOC to within ``sigma_d`` over the OCV slope, as the EKF's do, while a
  disagreement that lasts is put down to ``d`` and cannot pull the SOC away from the
  coulomb count and the LSTM.

The equations are the shared ones of :mod:`bsoc.kalman` (Joseph form, gating, SOC
projected onto [0, 1]). What the noise model reads (time since start, time at rest, the
C-rate, the LSTM's own variability) is remembered in the state too, so a stream's state is
one flat vector like every estimator's: ``concat(LSTM state, filter state)``.

Bad samples never give NaN: time or current not finite, |current| above the schema's limit,
or time not after the previous sample: the sample is skipped (the LSTM's state too);
temperature not finite: the last one is used; voltage not finite or out of range: neither
the LSTM nor the voltage update sees it, the SOC is coulomb-counted.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from bsoc.data.schema import MAX_CURRENT_C_RATE, VOLTAGE_RANGE_V
from bsoc.ekf.filter import voltage_std_at
from bsoc.ekf.lookup import ecm_point, ocv_inverse
from bsoc.kalman import predict_covariance, project_bounds, scratch, scratch_size, update_scalar
from bsoc.nn.kernel import step_packed

# Settings buffer (float64): fixed slots, then the variable-length parts at recorded offsets.
(CAPACITY_AH, SOC_WALK_VAR, OFFSET_VAR0, OFFSET_WALK_VAR, BIAS_TAU_S, BIAS_FRACTION,
 VARIANCE_SCALE, LSTM_ON, INIT_SOC, INIT_SOC_STD, GATE_SIGMA, REST_C_RATE, CRATE_TAU_S,
 VARIABILITY_TAU_S, START_TAU_1_S, START_TAU_2_S, VOLTAGE_FACTOR, RC_WALK_VAR, RC_VAR0,
 REST_SOC_STD, NOISE_TAU_S, VBIAS_VAR, VBIAS_TAU_S, RC_LOAD_FRACTION, N_STATES, N_KNOTS,
 KNOTS_AT, N_COEF, COEF_AT, N_VSTD, VSTD_AT, ECM_AT) = range(32)
SETTINGS_HEADER = 32

# Filter state, after x (n) and P (n * n): the measurement memory.
(LAST_TIME, LAST_CURRENT, LAST_TEMPERATURE, START_TIME, REST_S, CRATE_EMA, VARIABILITY_EMA,
 CHARGE, Z_MINUS_CHARGE, LAST_SIGMA, CAPACITY, STATUS) = range(12)
MEMORY_SIZE = 12
FRESH, RUNNING, PRESET = 0.0, 1.0, 2.0
SOC, OFFSET, BIAS, V1, V2, VBIAS = range(6)

# Noise-model features after the temperature hats (see bsoc.fusion.noise.FEATURES).
N_EXTRA_FEATURES = 7
_V_LOW, _V_HIGH = VOLTAGE_RANGE_V
_MAX_C = MAX_CURRENT_C_RATE
_LOG_VAR_MIN, _LOG_VAR_MAX = math.log(1e-8), math.log(0.25)


def state_size(n_states: int) -> int:
    """Floats of one stream's filter state for ``n_states`` (3; with the ECM 5, or 6 with
    its slow voltage error)."""
    return n_states + n_states * n_states + MEMORY_SIZE


@numba.njit(cache=True)
def work_size(buf: np.ndarray) -> int:
    """Floats of scratch :func:`filter_step` needs for the settings ``buf``."""
    n = int(buf[N_STATES])
    return 2 * n * n + 3 * n + int(buf[N_COEF]) + scratch_size(n)


@numba.njit(cache=True, inline="always")
def noise_features(buf: np.ndarray, memory: np.ndarray, time_s: float, z: float,
                   temperature_c: float, out: np.ndarray) -> None:
    """The noise model's features at this sample into ``out`` (K,): temperature hats, then
    log C-rate, two decays of the time since start, log time at rest, log variability,
    the LSTM's SOC and a low-SOC hinge."""
    m = int(buf[N_KNOTS])
    knots = buf[int(buf[KNOTS_AT]) : int(buf[KNOTS_AT]) + m]
    for k in range(m):
        out[k] = 0.0
    if m == 1 or temperature_c <= knots[0]:
        out[0] = 1.0
    elif temperature_c >= knots[m - 1]:
        out[m - 1] = 1.0
    else:
        j = 0
        while knots[j + 1] < temperature_c:
            j += 1
        w = (temperature_c - knots[j]) / (knots[j + 1] - knots[j])
        out[j] = 1.0 - w
        out[j + 1] = w
    since = max(time_s - memory[START_TIME], 0.0)
    out[m] = math.log(memory[CRATE_EMA] + 0.01)
    out[m + 1] = math.exp(-since / buf[START_TAU_1_S])
    out[m + 2] = math.exp(-since / buf[START_TAU_2_S])
    out[m + 3] = math.log1p(memory[REST_S] / 60.0)
    out[m + 4] = math.log(math.sqrt(max(memory[VARIABILITY_EMA], 0.0)) + 1e-4)
    out[m + 5] = z
    out[m + 6] = 5.0 * max(0.2 - z, 0.0)


@numba.njit(cache=True, inline="always")
def start_memory(memory: np.ndarray, time_s: float, current_a: float, z: float,
                 capacity: float) -> None:
    """A stream's measurement memory at its first sample."""
    memory[START_TIME] = time_s
    memory[REST_S] = 0.0
    memory[CRATE_EMA] = abs(current_a) / capacity
    memory[VARIABILITY_EMA] = 0.0
    memory[CHARGE] = 0.0
    memory[Z_MINUS_CHARGE] = z


@numba.njit(cache=True, inline="always")
def advance_memory(buf: np.ndarray, memory: np.ndarray, dt: float, current_a: float,
                   charge_step: float, z: float, has_z: bool, capacity: float) -> None:
    """Advance the memory by one interval: C-rate average, time at rest, coulomb count,
    and the variability of the LSTM's SOC that the charge does not explain."""
    c_rate = abs(current_a) / capacity
    memory[CRATE_EMA] += (1.0 - math.exp(-dt / buf[CRATE_TAU_S])) * (c_rate - memory[CRATE_EMA])
    memory[REST_S] = memory[REST_S] + dt if c_rate < buf[REST_C_RATE] else 0.0
    memory[CHARGE] += charge_step
    if has_z:
        unexplained = (z - memory[CHARGE]) - memory[Z_MINUS_CHARGE]
        alpha = 1.0 - math.exp(-dt / buf[VARIABILITY_TAU_S])
        memory[VARIABILITY_EMA] += alpha * (unexplained * unexplained / dt
                                            - memory[VARIABILITY_EMA])
        memory[Z_MINUS_CHARGE] = z - memory[CHARGE]


@numba.njit(cache=True, inline="always")
def lstm_variance(buf: np.ndarray, features: np.ndarray) -> float:
    """sigma^2: the noise model's variance of the LSTM's error, times the tuned scale."""
    n_coef = int(buf[N_COEF])
    at = int(buf[COEF_AT])
    log_var = 0.0
    for k in range(n_coef):
        log_var += buf[at + k] * features[k]
    return buf[VARIANCE_SCALE] * math.exp(min(max(log_var, _LOG_VAR_MIN), _LOG_VAR_MAX))


@numba.njit(cache=True, inline="always")
def voltage_noise(buf: np.ndarray, temperature_c: float) -> float:
    """Variance of the voltage measurement: factor x the EKF's voltage std at T, squared."""
    at = int(buf[VSTD_AT])
    vstd = buf[at : at + int(buf[N_VSTD])]
    std = buf[VOLTAGE_FACTOR] * voltage_std_at(buf[int(buf[ECM_AT]):], vstd, temperature_c)
    return std * std


@numba.njit(cache=True, inline="always")
def check_sample(buf: np.ndarray, sample: np.ndarray, state: np.ndarray
                 ) -> tuple[bool, bool, float, float]:
    """(usable, voltage ok, temperature to use, capacity) of a sample for a stream."""
    n = int(buf[N_STATES])
    mem = n + n * n
    running = state[mem + STATUS] == RUNNING
    time_s, voltage, current, temperature = sample[0], sample[1], sample[2], sample[3]
    if not math.isfinite(temperature):
        temperature = state[mem + LAST_TEMPERATURE] if running else math.nan
    capacity = state[mem + CAPACITY] if state[mem + CAPACITY] > 0 else buf[CAPACITY_AH]
    usable = (math.isfinite(time_s) and math.isfinite(current) and math.isfinite(temperature)
              and abs(current) <= _MAX_C * capacity
              and (not running or time_s - state[mem + LAST_TIME] > 0))
    v_ok = math.isfinite(voltage) and _V_LOW <= voltage <= _V_HIGH
    return usable, v_ok, temperature, capacity


@numba.njit(cache=True)
def filter_step(buf: np.ndarray, sample: np.ndarray, z: float, has_z: bool,
                state: np.ndarray, new: np.ndarray, work: np.ndarray) -> tuple[float, float]:
    """Advance one stream's filter ``state`` by one sample and its LSTM SOC ``z`` (used only
    when ``has_z``) into ``new``; returns (SOC, its standard deviation). ``work``: scratch
    of :func:`work_size` floats."""
    n = int(buf[N_STATES])
    mem = n + n * n
    for k in range(state.shape[0]):
        new[k] = state[k]
    status = state[mem + STATUS]
    usable, v_ok, temperature, capacity = check_sample(buf, sample, state)
    if not usable:
        if status == RUNNING or status == PRESET:
            return state[SOC], math.sqrt(state[n])
        return buf[INIT_SOC], buf[INIT_SOC_STD]
    time_s, voltage, current = sample[0], sample[1], sample[2]
    has_z = has_z and v_ok and buf[LSTM_ON] > 0
    use_voltage = n >= 5 and buf[VOLTAGE_FACTOR] > 0 and v_ok
    n_coef = int(buf[N_COEF])
    x = work[:n]
    P = work[n:mem].reshape(n, n)
    F = work[mem : mem + n * n].reshape(n, n)
    q = work[mem + n * n : mem + n * n + n]
    H = work[mem + n * n + n : mem + n * n + 2 * n]
    features = work[mem + n * n + 2 * n : mem + n * n + 2 * n + n_coef]
    m1, m2, v1, v2 = scratch(work[mem + n * n + 2 * n + n_coef :], n)
    x[:] = state[:n]
    P.ravel()[:] = state[n:mem]
    memory = new[mem:]
    rho = buf[BIAS_FRACTION]
    ecm = buf[int(buf[ECM_AT]):]
    first = status != RUNNING
    if first:
        start_memory(memory, time_s, current, z if has_z else 0.5, capacity)
        noise_features(buf, memory, time_s, z if has_z else 0.5, temperature, features)
        variance = lstm_variance(buf, features)
        memory[LAST_SIGMA] = math.sqrt(variance)
        if status == FRESH:
            x[:] = 0.0
            P[:, :] = 0.0
            x[SOC] = buf[INIT_SOC]
            P[SOC, SOC] = buf[INIT_SOC_STD] ** 2
        if n >= 5:
            P[V1, V1] = buf[RC_VAR0]
            P[V2, V2] = buf[RC_VAR0]
        if status == FRESH and use_voltage:
            # start from the voltage less the IR drop, as the EKF does; under load the RC
            # voltages are unknown, between zero and their steady state for the current:
            # a fraction of it is their prior, that much again their extra uncertainty
            point = ecm_point(ecm, 0.5, temperature)
            fraction = buf[RC_LOAD_FRACTION]
            x[V1], x[V2] = fraction * point[3] * current, fraction * point[4] * current
            P[V1, V1] += x[V1] * x[V1]
            P[V2, V2] += x[V2] * x[V2]
            x[SOC] = ocv_inverse(ecm, voltage - point[2] * current - x[V1] - x[V2],
                                 temperature)
            if abs(current) <= buf[REST_C_RATE] * capacity:
                P[SOC, SOC] = buf[REST_SOC_STD] ** 2
        P[OFFSET, OFFSET] = buf[OFFSET_VAR0]
        P[BIAS, BIAS] = rho * variance
        if n == 6:
            P[VBIAS, VBIAS] = buf[VBIAS_VAR]
    else:
        dt = time_s - state[mem + LAST_TIME]
        ibar = 0.5 * (state[mem + LAST_CURRENT] + current)
        scale = dt / (3600.0 * capacity)
        F[:, :] = 0.0
        for i in range(n):
            F[i, i] = 1.0
        q[:] = 0.0
        if n >= 5:  # RC voltages with the parameters at the previous state
            point = ecm_point(ecm, x[SOC], state[mem + LAST_TEMPERATURE])
            a1, a2 = math.exp(-dt / point[5]), math.exp(-dt / point[6])
            x[V1] = a1 * x[V1] + point[3] * (1 - a1) * (ibar - x[OFFSET])
            x[V2] = a2 * x[V2] + point[4] * (1 - a2) * (ibar - x[OFFSET])
            F[V1, V1], F[V1, OFFSET] = a1, -point[3] * (1 - a1)
            F[V2, V2], F[V2, OFFSET] = a2, -point[4] * (1 - a2)
            q[V1] = q[V2] = buf[RC_WALK_VAR] * dt
        if n == 6:
            phi_d = math.exp(-dt / buf[VBIAS_TAU_S])
            x[VBIAS] *= phi_d
            F[VBIAS, VBIAS] = phi_d
            q[VBIAS] = buf[VBIAS_VAR] * (1.0 - phi_d * phi_d)
        x[SOC] += (ibar - x[OFFSET]) * scale
        F[SOC, OFFSET] = -scale
        advance_memory(buf, memory, dt, current, ibar * scale, z, has_z, capacity)
        z_now = z if has_z else memory[Z_MINUS_CHARGE] + memory[CHARGE]
        noise_features(buf, memory, time_s, z_now, temperature, features)
        variance = lstm_variance(buf, features)
        sigma = math.sqrt(variance)
        phi = math.exp(-dt / buf[BIAS_TAU_S])
        x[BIAS] *= phi * sigma / memory[LAST_SIGMA]
        F[BIAS, BIAS] = phi * sigma / memory[LAST_SIGMA]
        memory[LAST_SIGMA] = sigma
        q[SOC] = buf[SOC_WALK_VAR] * dt
        q[OFFSET] = buf[OFFSET_WALK_VAR] * dt
        q[BIAS] = rho * variance * (1.0 - phi * phi)
        predict_covariance(P, F, q, m1)
    project_bounds(x, P, SOC, 0.0, 1.0)
    H[:] = 0.0
    gate = buf[GATE_SIGMA]
    if use_voltage and not first:  # a fresh stream's voltage set its start (see the EKF)
        point = ecm_point(ecm, x[SOC], temperature)
        y = voltage - (point[0] + point[2] * (current - x[OFFSET]) + x[V1] + x[V2])
        H[SOC], H[OFFSET], H[V1], H[V2] = point[1], -point[2], 1.0, 1.0
        if n == 6:
            y -= x[VBIAS]
            H[VBIAS] = 1.0
        update_scalar(x, P, y, H, voltage_noise(buf, temperature), gate, m1, m2, v1, v2)
        project_bounds(x, P, SOC, 0.0, 1.0)
        H[:] = 0.0
    if has_z:
        H[SOC], H[BIAS] = 1.0, 1.0
        interval = 1.0 if first else time_s - state[mem + LAST_TIME]
        r = (1.0 - rho) * variance * max(1.0, 2.0 * buf[NOISE_TAU_S] / interval)
        update_scalar(x, P, z - x[SOC] - x[BIAS], H, r, gate, m1, m2, v1, v2)
        project_bounds(x, P, SOC, 0.0, 1.0)
    new[:n] = x
    new[n:mem] = work[n:mem]
    new[mem + LAST_TIME] = time_s
    new[mem + LAST_CURRENT] = current
    new[mem + LAST_TEMPERATURE] = temperature
    new[mem + STATUS] = RUNNING
    return x[SOC], math.sqrt(max(P[SOC, SOC], 0.0))


@numba.njit(cache=True)
def filter_sequence(buf: np.ndarray, samples: np.ndarray, z: np.ndarray, has_z: np.ndarray,
                    state: np.ndarray, soc: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Run one stream through a whole sequence (T, 4) with its LSTM SOC ``z`` (T,); fills
    ``soc`` and ``std`` (T,) and returns the final filter state."""
    current = state.copy()
    new = state.copy()
    work = np.empty(work_size(buf))
    for t in range(samples.shape[0]):
        soc[t], std[t] = filter_step(buf, samples[t], z[t], has_z[t], current, new, work)
        current, new = new, current
    return current


@numba.njit(cache=True)
def lstm_inputs(buf: np.ndarray, samples: np.ndarray, filter_states: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The samples as the LSTM may see them (temperature filled in) and which it may see."""
    batch = samples.shape[0]
    clean = np.empty((batch, 4))
    ok = np.empty(batch, dtype=np.bool_)
    for b in range(batch):
        usable, v_ok, temperature, _ = check_sample(buf, samples[b], filter_states[b])
        ok[b] = usable and v_ok
        if ok[b]:
            clean[b, 0], clean[b, 1], clean[b, 2] = samples[b, 0], samples[b, 1], samples[b, 2]
            clean[b, 3] = temperature
        else:  # any finite row; the LSTM's state is restored afterwards
            clean[b, 0], clean[b, 1], clean[b, 2], clean[b, 3] = 0.0, 3.7, 0.0, 25.0
    return clean, ok


@numba.njit(cache=True, nogil=True)
def fusion_step(samples: np.ndarray, states: np.ndarray, weights: np.ndarray,
                layout: np.ndarray, buf: np.ndarray, soc: np.ndarray, std: np.ndarray,
                new_states: np.ndarray) -> None:
    """B streams, one sample each: the LSTM's compiled step (:mod:`bsoc.nn.kernel`) on
    ``states[:, :S]``, then the filter on ``states[:, S:]``; outputs written in place."""
    lstm_size = 0
    for layer in range(layout.shape[0] - 1):
        lstm_size += 2 * layout[layer, 0]
    batch = samples.shape[0]
    clean, ok = lstm_inputs(buf, samples, states[:, lstm_size:])
    z = np.empty(batch)
    step_packed(clean, states[:, :lstm_size], weights, layout, z, new_states[:, :lstm_size])
    work = np.empty(work_size(buf))
    for b in range(batch):
        if not ok[b]:
            new_states[b, :lstm_size] = states[b, :lstm_size]
        soc[b], std[b] = filter_step(buf, samples[b], z[b], ok[b], states[b, lstm_size:],
                                     new_states[b, lstm_size:], work)


@numba.njit(cache=True)
def sequence_features(buf: np.ndarray, samples: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The noise model's features (T, K) along a clean sequence from its first sample, with
    the memory recursion of :func:`filter_step` (for fitting the noise model)."""
    n_samples = samples.shape[0]
    out = np.empty((n_samples, int(buf[N_COEF])))
    memory = np.zeros(MEMORY_SIZE)
    capacity = buf[CAPACITY_AH]
    start_memory(memory, samples[0, 0], samples[0, 2], z[0], capacity)
    noise_features(buf, memory, samples[0, 0], z[0], samples[0, 3], out[0])
    for t in range(1, n_samples):
        dt = samples[t, 0] - samples[t - 1, 0]
        ibar = 0.5 * (samples[t - 1, 2] + samples[t, 2])
        advance_memory(buf, memory, dt, samples[t, 2], ibar * dt / (3600.0 * capacity), z[t],
                       True, capacity)
        noise_features(buf, memory, samples[t, 0], z[t], samples[t, 3], out[t])
    return out
