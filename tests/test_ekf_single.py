"""The single-stream float path equals the vectorised filter; SOC projection; noise per T."""

from __future__ import annotations

import numpy as np
import pytest

from bsoc.ekf.ecm import EcmTables, temperature_weights
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.ekf.filter import (
    InitSettings,
    NoiseSettings,
    ekf_step,
    project_soc,
    voltage_variance,
)
from bsoc.errors import ConfigError
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
def test_single_stream_path_equals_vectorised_step(
    tables: EcmTables, noise: NoiseSettings, start: str
) -> None:
    """Clean then garbage samples, near full and near empty: same SOC and state to 1e-12."""
    cycle = make_cycle(tables, "c", 12.0, "drive", seed=8, soc0=1.0)
    clean = cycle.samples()
    samples = np.concatenate([clean[:300], garbage(clean[300:900], seed=2), clean[-300:]])
    estimator = EkfSocEstimator(tables, noise, InitSettings())
    state = estimator.initial_state(soc=0.97 if start == "preset" else None)[None]
    reference = state.copy()
    for row in samples:
        soc, state = estimator.step_batch(row[None], state)  # B = 1: the float path
        soc_ref, reference = ekf_step(tables, noise, estimator.init, row[None], reference)
        np.testing.assert_allclose(soc, soc_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(state, reference, rtol=1e-10, atol=1e-13)
        assert 0.0 <= soc[0] <= 1.0
    np.testing.assert_allclose(
        estimator.predict(samples), EkfSocEstimator(tables, noise).predict(samples), atol=0
    )


def test_projection_moves_the_rc_voltages_along_their_correlation() -> None:
    """x - P e1 (SOC - clip(SOC)) / P11, exactly; states inside [0, 1] are untouched."""
    P = np.array([[[4e-4, -2e-4, 1e-5], [-2e-4, 3e-4, 0.0], [1e-5, 0.0, 1e-4]]] * 2)
    x = np.array([[1.02, -0.01, 0.003], [0.4, 0.02, 0.01]])
    projected = project_soc(x, P)
    np.testing.assert_array_equal(projected[1], x[1])
    assert projected[0, 0] == 1.0
    assert projected[0, 1] == pytest.approx(-0.01 + 2e-4 / 4e-4 * 0.02, abs=1e-15)
    assert projected[0, 2] == pytest.approx(0.003 - 1e-5 / 4e-4 * 0.02, abs=1e-15)


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
    variance = voltage_variance(tables, PER_T_NOISE.voltage_std, temperature)
    j, w = temperature_weights(tables.temperature_c, temperature)
    std = np.asarray(PER_T_NOISE.voltage_std)
    np.testing.assert_allclose(np.sqrt(variance), std[j] * (1 - w) + std[j + 1] * w, rtol=1e-15)
    np.testing.assert_allclose(np.sqrt(variance[[0, 1, 3, 4]]), [8e-3, 8e-3, 3e-3, 3e-3])
    assert 3e-3 < np.sqrt(variance[2]) < 8e-3
    per_stream = voltage_variance(tables, np.array([[1e-3], [2e-3]]), temperature[:2])
    np.testing.assert_allclose(per_stream, [1e-6, 4e-6])
    with pytest.raises(ConfigError, match="temperatures"):
        EkfSocEstimator(tables, NoiseSettings(1e-5, 1e-4, [1e-3, 2e-3, 3e-3]))
    with pytest.raises(ConfigError, match="single values"):
        EkfSocEstimator(tables, NoiseSettings(np.array([1e-5, 1e-6]), 1e-4, 1e-3))
