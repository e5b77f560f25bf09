"""EkfSocEstimator: filterpy equivalence, bad inputs, model folder and the ``bsoc ekf fit`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from filterpy.kalman import ExtendedKalmanFilter
from stream_set import StreamSet
from typer.testing import CliRunner

from bsoc.cli import app
from bsoc.data.dataset import Dataset
from bsoc.ekf.ecm import EcmTables
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.ekf.filter import CAPACITY, LAST_TIME, PRESET, RUNNING, STATUS, NoiseSettings
from bsoc.ekf.fit import fit_ekf
from bsoc.ekf.tuning import NoiseTuner
from bsoc.errors import ConfigError, ModelFileError, OverwriteRefusedError
from bsoc.estimator import load_estimator
from test_ekf_synthetic import make_cycle, true_tables

NOISE = NoiseSettings(soc_std=1e-5, rc_std=1e-4, voltage_std=5e-3)


@pytest.fixture(scope="module")
def tables() -> EcmTables:
    return true_tables()


@pytest.fixture(scope="module")
def samples(tables: EcmTables) -> np.ndarray:
    return make_cycle(tables, "c", 18.0, "drive", seed=5, soc0=0.9).samples()[:400]


def test_equations_equal_filterpy_extended_kalman_filter(
    tables: EcmTables, samples: np.ndarray
) -> None:
    """Our vectorised predict/update equals filterpy's EKF predict() + update() step by step."""
    noise = NoiseSettings(soc_std=1e-5, rc_std=1e-3, voltage_std=5e-3, gate_sigma=1e9)
    estimator = EkfSocEstimator(tables, noise)
    state = estimator.initial_state(soc=0.6, soc_std=0.2)[None]
    _, state = estimator.step_batch(samples[:1], state)
    reference = ExtendedKalmanFilter(dim_x=3, dim_z=1)
    reference.x = state[0, :3].reshape(3, 1).copy()
    reference.P = state[0, 3:12].reshape(3, 3).copy()
    reference.R = np.array([[noise.voltage_std**2]])
    for k in range(1, len(samples)):
        (t0, _, i0, temp0), (t1, v1, i1, temp1) = samples[k - 1], samples[k]
        dt, ibar = t1 - t0, 0.5 * (i0 + i1)
        p = tables.lookup(np.array([reference.x[0, 0]]), np.array([temp0]))
        a1, a2 = np.exp(-dt / p.tau1[0]), np.exp(-dt / p.tau2[0])
        reference.F = np.diag([1.0, a1, a2])
        reference.B = np.array(
            [[dt / (3600 * p.capacity_ah[0])], [p.r1[0] * (1 - a1)], [p.r2[0] * (1 - a2)]]
        )
        reference.Q = np.diag([noise.soc_std**2, noise.rc_std**2, noise.rc_std**2]) * dt
        reference.predict(u=np.array([[ibar]]))

        def jacobian(x: np.ndarray, temp: float = temp1) -> np.ndarray:
            return np.array([[tables.lookup(x[0], np.array([temp])).docv[0], 1.0, 1.0]])

        def measure(x: np.ndarray, temp: float = temp1, current: float = i1) -> np.ndarray:
            q = tables.lookup(x[0], np.array([temp]))
            return np.array([[q.ocv[0] + q.r0[0] * current + x[1, 0] + x[2, 0]]])

        reference.update(np.array([[v1]]), jacobian, measure)
        _, state = estimator.step_batch(samples[k : k + 1], state)
        np.testing.assert_allclose(state[0, :3], reference.x[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state[0, 3:12], reference.P.reshape(-1), rtol=1e-8, atol=1e-14)


def test_predict_equals_streaming(tables: EcmTables, samples: np.ndarray) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    streams = StreamSet(estimator, n_streams=2)
    stepped = [streams.step(row, stream=1) for row in samples]
    np.testing.assert_array_equal(np.array(stepped), estimator.predict(samples))


def test_initialises_from_ir_corrected_voltage_wider_under_load(tables: EcmTables) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    at = tables.lookup(np.array([0.7, 0.5]), np.array([25.0, 25.0]))
    loaded_v = float(at.ocv[0] + at.r0[1] * -2.0)  # OCV(70 %) minus the IR drop R0(50 %) * 2 A
    soc, state = estimator.step_batch(
        np.array([[0.0, at.ocv[0], 0.0, 25.0], [0.0, loaded_v, -2.0, 25.0], [0.0, 9.0, -2.0, 25.0]]),
        np.stack([estimator.initial_state()] * 3),
    )
    assert soc[0] == pytest.approx(0.7, abs=0.01)
    assert soc[1] == pytest.approx(0.7, abs=0.01)  # OCV^-1(V - R0 I), not a blind 50 %
    assert soc[2] == 0.5  # no usable voltage: the "unknown" SOC
    assert state[1, 3] > state[0, 3]  # SOC variance: wide when started under load
    assert (state[:, STATUS] == RUNNING).all()


@pytest.mark.parametrize("streams", [1, 2])  # the single-stream float path and the vectorised one
def test_first_voltage_sets_the_start_and_is_not_used_again(
    tables: EcmTables, streams: int
) -> None:
    """A full cell whose first sample is under load with the voltage still at rest (a load
    step the voltage has not followed yet): V - R0 I lies above OCV(100 %), SOC starts at 1.

    The failure this guards against: that same voltage was used again for an update, and its
    remainder, projected off SOC > 1, set both RC voltages to +48 mV here (+72 mV on the
    Panasonic -10 degC drives), against the current's sign; unlearning them pulled SOC
    down by 10 % for the rest of the cycle. Now the RC voltages and the covariance start as
    initialised, and the voltage updates the state from the next sample on.
    """
    estimator = EkfSocEstimator(tables, NOISE)
    full = tables.lookup(np.array([1.0]), np.array([25.0]))
    rest_v = float(full.ocv[0])
    fresh = np.stack([estimator.initial_state()] * streams)
    soc, state = estimator.step_batch(np.array([[0.0, rest_v, -2.0, 25.0]] * streams), fresh)
    init = estimator.init
    expected_p = np.diag([init.unknown_soc_std**2, init.rc_std**2, init.rc_std**2]).reshape(-1)
    np.testing.assert_array_equal(soc, 1.0)
    np.testing.assert_array_equal(state[:, 1:3], 0.0)
    np.testing.assert_array_equal(state[:, 3:12], np.tile(expected_p, (streams, 1)))
    loaded_v = float(full.ocv[0] + full.r0[0] * -2.0)
    _, state = estimator.step_batch(np.array([[1.0, loaded_v, -2.0, 25.0]] * streams), state)
    assert (state[:, 3] < 0.01 * expected_p[0]).all()  # the next voltage is measured


def test_bad_samples_never_give_nan_and_are_handled_as_documented(
    tables: EcmTables, samples: np.ndarray
) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    state = estimator.initial_state()[None]
    for row in samples[:50]:
        _, state = estimator.step_batch(row[None], state)
    t, v, i, temp = samples[50]
    skipped = [
        [np.nan, v, i, temp],  # no time
        [t, v, np.nan, temp],  # no current
        [t, v, 1e4, temp],  # current spike beyond 40 C: sensor fault
        [t - 10.0, v, i, temp],  # out of order
    ]
    for row in skipped:
        soc, new = estimator.step_batch(np.array([row]), state)
        np.testing.assert_array_equal(new, state)
        assert soc[0] == state[0, 0]
    soc_nan_v, new = estimator.step_batch(np.array([[t, np.nan, i, temp]]), state)
    assert (
        np.isfinite(np.delete(new[0], CAPACITY)).all() and new[0, LAST_TIME] == t
    )  # predicted only
    assert new[0, 3] > state[0, 3]  # ... so the SOC variance grows
    _, with_temperature = estimator.step_batch(np.array([[t, v, i, state[0, 14]]]), state)
    _, without = estimator.step_batch(np.array([[t, v, i, np.nan]]), state)
    np.testing.assert_array_equal(with_temperature, without)  # last temperature reused
    soc_fresh, fresh = estimator.step_batch(
        np.array([[0.0, 3.7, np.nan, 25.0]]), estimator.initial_state()[None]
    )
    assert soc_fresh[0] == 0.5 and fresh[0, STATUS] == 0.0


def test_random_garbage_keeps_soc_finite_and_in_range(
    tables: EcmTables, samples: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    noisy = samples.copy()
    noisy[rng.random(noisy.shape) < 0.05] = np.nan
    noisy[rng.random(len(noisy)) < 0.03, 2] *= 30.0  # current spikes
    noisy[rng.random(len(noisy)) < 0.03, 1] = 4.99  # voltage glitches to the top of the range
    estimate = EkfSocEstimator(tables, NOISE).predict(noisy)
    assert np.isfinite(estimate).all() and (estimate >= 0).all() and (estimate <= 1).all()


def test_soc_is_clamped_with_a_valid_covariance(tables: EcmTables) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    state = estimator.initial_state(soc=0.99)[None]
    for k in range(20):
        soc, state = estimator.step_batch(np.array([[float(k), 4.9, 0.0, 25.0]]), state)
    assert soc[0] == 1.0
    P = state[0, 3:12].reshape(3, 3)
    assert np.allclose(P, P.T) and (np.linalg.eigvalsh(P) > 0).all()


def test_zero_capacity_is_refused(tables: EcmTables) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    with pytest.raises(ConfigError, match="capacity"):
        estimator.initial_state(capacity_ah=0.0)
    broken = tables.to_json() | {"capacity_ah": [0.0, 1.0]}
    with pytest.raises(ConfigError, match="capacity_ah"):
        EcmTables.from_json(broken)
    assert estimator.initial_state(soc=0.5, capacity_ah=2.0)[STATUS] == PRESET


def test_sizes_are_counted_from_the_tables(tables: EcmTables) -> None:
    estimator = EkfSocEstimator(tables, NOISE)
    entries = 2 + 2 * 101 + 3 * 2 * 6 + 3 * 2  # temperatures, OCV, R tables, tau1/tau2/capacity
    assert estimator.learnables() == entries
    assert estimator.weight_bytes() == 4 * entries
    assert estimator.macs_per_sample() > 200


def test_save_load_round_trip_without_pickle(
    tmp_path: Path, tables: EcmTables, samples: np.ndarray
) -> None:
    estimator = EkfSocEstimator(tables, NOISE, metadata={"data": {"name": "x"}})
    estimator.save(tmp_path / "m")
    with pytest.raises(OverwriteRefusedError):
        estimator.save(tmp_path / "m")
    loaded = load_estimator(tmp_path / "m")
    assert isinstance(loaded, EkfSocEstimator) and loaded.metadata["data"] == {"name": "x"}
    np.testing.assert_array_equal(loaded.predict(samples[:100]), estimator.predict(samples[:100]))
    # config.json, and bsoc's record of the files it wrote (what --force may replace)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".bsoc-model.json", "config.json"]
    assert json.loads((tmp_path / "m" / ".bsoc-model.json").read_text())["files"] == ["config.json"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["ecm"]["ocv_v"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="not a valid EKF config"):
        load_estimator(tmp_path / "m")


def test_fit_uses_only_the_training_split(toy_dataset: Path) -> None:
    dataset = Dataset.load(toy_dataset)
    tuner = NoiseTuner(soc_std=(1e-5,), rc_std=(1e-4,), voltage_factor=(1.0, 4.0), refine=False)
    estimator, _ = fit_ekf(dataset, tuner=tuner)
    train = {c.meta.name for c in dataset.split("train")}
    assert set(estimator.metadata["data"]["train_cycles"]) == train
    assert set(estimator.metadata["tuning"]["cycles"]) <= train
    assert {r["ambient_c"] for r in estimator.metadata["fit"]["validation"]} == {0.0, 10.0}
    assert estimator.metadata["data"]["fingerprint"] == dataset.fingerprint()


def test_cli_fit_writes_model_and_figures(toy_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ekf"
    runner = CliRunner()
    result = runner.invoke(app, ["ekf", "fit", str(toy_dataset), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "ekf" and set(summary["voltage_rmse_mv"]) == {"0", "10", "25"}
    assert all(v < 10.0 for v in summary["voltage_rmse_mv"].values())
    assert {p.name for p in out.iterdir()} >= {"config.json", "ocv.png", "fit_voltage_25C.png"}
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "ekf" and config["command"].startswith("bsoc")
    assert config["data"]["name"] == "toy" and len(config["fit"]["by_temperature"]) == 3
    again = runner.invoke(app, ["ekf", "fit", str(toy_dataset), "--out", str(out)])
    assert again.exit_code != 0 and isinstance(again.exception, OverwriteRefusedError)
