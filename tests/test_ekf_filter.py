"""One compiled EKF step for one stream and many; SOC projection; voltage noise per T."""

from __future__ import annotations

import numpy as np
import pytest

from bsoc.ekf.ecm import EcmTables, temperature_weights
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.ekf.filter import InitSettings, NoiseSettings, ekf_step, new_state, voltage_std_at
from bsoc.errors import ConfigError
from bsoc.kalman import project_bounds
from test_ekf_synthetic import make_cycle, true_tables

PER_T_NOISE = NoiseSettings(soc_std=1e-5, rc_std=1e-4, voltage_std=[8e-3, 3e-3], gate_sigma=4.0)


@pytest.fixture(scope="module")
def tables() -> EcmTables:
    return true_tables()


def garbage(samples: np.ndarray, seed: int) -> np.ndarray:
    """Samples with NaNs, current spikes, voltage glitches, repeated and backwards times."""
    rng = np.random.default_rng(seed)
    noisy = samples.copy()
    noisy[rng.random(noisy.shape) < 0.04] = np.nan
    noisy[rng.random(len(noisy)) < 0.03, 2] *= 60.0
    noisy[rng.random(len(noisy)) < 0.03, 1] = rng.choice([1.0, 4.99, 7.0])
    back = rng.random(len(noisy)) < 0.02
    noisy[back, 0] -= 5.0
    noisy[:, 3] += rng.normal(0.0, 8.0, len(noisy))  # temperatures between the table rows
    return noisy


@pytest.mark.parametrize("noise", [PER_T_NOISE, NoiseSettings(1e-4, 1e-3, 5e-3)])
@pytest.mark.parametrize("start", ["fresh", "preset"])
def test_one_stream_alone_equals_it_among_others(
    tables: EcmTables, noise: NoiseSettings, start: str
) -> None:
    """Clean then garbage samples, near full and near empty: a stream stepped alone, inside
    a batch of streams with other noise and states (as the tuning runs), and along a whole
    sequence (predict) gives exactly the same SOC and state."""
    cycle = make_cycle(tables, "c", 12.0, "drive", seed=8, soc0=1.0)
    clean = cycle.samples()
    samples = np.concatenate([clean[:300], garbage(clean[300:900], seed=2), clean[-300:]])
    estimator = EkfSocEstimator(tables, noise, InitSettings())
    state = estimator.initial_state(soc=0.97 if start == "preset" else None)[None]
    own = np.atleast_1d(noise.voltage_std)
    others = NoiseSettings(
        soc_std=np.array([noise.soc_std, 1e-6, 1e-3]), rc_std=np.array([noise.rc_std, 1e-2, 1e-5]),
        voltage_std=np.stack([own, *(np.array([[2e-3, 9e-3], [1e-2, 1e-3]])[:, : len(own)])]),
        gate_sigma=noise.gate_sigma)
    batch = np.concatenate([state, [new_state(soc=0.3, soc_std=0.2)], [new_state()]])
    stepped = []
    for row in samples:
        soc, state = estimator.step_batch(row[None], state)
        socs, batch = ekf_step(tables, others, estimator.init, np.repeat(row[None], 3, 0), batch)
        assert soc[0] == socs[0] and (state[0] == batch[0]).all()
        assert 0.0 <= soc[0] <= 1.0 and np.isfinite(batch).all()
        stepped.append(soc[0])
    if start == "fresh":  # predict starts a fresh stream
        np.testing.assert_array_equal(estimator.predict(samples), stepped)


def test_projection_moves_the_rc_voltages_along_their_correlation() -> None:
    """x - P e1 (SOC - clip(SOC)) / P11, exactly; states inside [0, 1] are untouched."""
    P = np.array([[4e-4, -2e-4, 1e-5], [-2e-4, 3e-4, 0.0], [1e-5, 0.0, 1e-4]])
    inside = np.array([0.4, 0.02, 0.01])
    x = inside.copy()
    project_bounds(x, P, 0, 0.0, 1.0)
    np.testing.assert_array_equal(x, inside)
    x = np.array([1.02, -0.01, 0.003])
    project_bounds(x, P, 0, 0.0, 1.0)
    assert x[0] == 1.0
    assert x[1] == pytest.approx(-0.01 + 2e-4 / 4e-4 * 0.02, abs=1e-15)
    assert x[2] == pytest.approx(0.003 - 1e-5 / 4e-4 * 0.02, abs=1e-15)


def test_full_cell_with_voltage_above_the_model_keeps_rc_voltages_bounded(
    tables: EcmTables,
) -> None:
    """Voltage 30 mV above the model of a full cell, under pulses: RC voltages stay sane.

    The failure this guards against: with SOC clipped alone, each update towards SOC > 1
    left its share in the RC voltages, which drift to 0.4 V here (to -1 V on the Panasonic
    drives while SOC stayed at 100 %); projected along P they stay within tens of mV.
    """
    estimator = EkfSocEstimator(tables, NoiseSettings(1e-5, 1e-4, 2e-3))
    state = estimator.initial_state(soc=1.0, soc_std=0.02)[None]
    full = tables.lookup(np.array([1.0]), np.array([25.0]))
    largest = 0.0
    for k in range(1, 1200):
        current = -1.0 if k % 60 < 40 else 0.0
        voltage = float(full.ocv[0] + 0.03 + full.r0[0] * current)
        _, state = estimator.step_batch(np.array([[float(k), voltage, current, 25.0]]), state)
        largest = max(largest, float(np.abs(state[0, 1:3]).max()))
    assert largest < 0.1


def test_voltage_noise_follows_temperature_like_the_tables(tables: EcmTables) -> None:
    temperature = np.array([-5.0, 10.0, 17.0, 25.0, 40.0])
    std = np.asarray(PER_T_NOISE.voltage_std)
    at = np.array([voltage_std_at(tables.block, std, t) for t in temperature])
    j, w = temperature_weights(tables.temperature_c, temperature)
    np.testing.assert_allclose(at, std[j] * (1 - w) + std[j + 1] * w, rtol=1e-15)
    np.testing.assert_allclose(at[[0, 1, 3, 4]], [8e-3, 8e-3, 3e-3, 3e-3])
    assert 3e-3 < at[2] < 8e-3
    assert voltage_std_at(tables.block, np.array([2e-3]), 17.0) == 2e-3
    with pytest.raises(ConfigError, match="temperatures"):
        EkfSocEstimator(tables, NoiseSettings(1e-5, 1e-4, [1e-3, 2e-3, 3e-3]))
    with pytest.raises(ConfigError, match="single values"):
        EkfSocEstimator(tables, NoiseSettings(np.array([1e-5, 1e-6]), 1e-4, 1e-3))
