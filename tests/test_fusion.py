"""The fusion estimator: filter maths, noise model fit, model folder, bad input, calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bsoc.data.dataset import Dataset
from bsoc.data.schema import coulomb_soc
from bsoc.estimator import load_estimator
from bsoc.evaluate import CycleRun, calibration, calibration_metrics, evaluate
from bsoc.fusion import filter as kernel
from bsoc.fusion.noise import NoiseModel, fit_coefficients, fit_noise_model
from bsoc.fusion.settings import FusionSettings
from stream_set import StreamSet
from test_serve_helpers import rows_of

torch = pytest.importorskip("torch")

CAPACITY = 0.5  # Ah, the toy cells' (conftest)
KNOTS = (0.0, 25.0)


def _lstm():
    from bsoc.nn.estimator import LstmSocEstimator
    from bsoc.nn.network import NetworkConfig, SocNetwork

    torch.manual_seed(7)
    network = SocNetwork(NetworkConfig(hidden_sizes=(16, 8)))
    network.set_normalisation(np.array([3.7, -0.5, 15.0]), np.array([0.3, 0.6, 10.0]))
    return LstmSocEstimator(network.eval(), name="tiny-lstm")


def _noise(sigma: float = 0.02) -> NoiseModel:
    """A constant variance sigma^2 (temperature hats at log sigma^2, the rest zero)."""
    coef = np.zeros(len(KNOTS) + kernel.N_EXTRA_FEATURES)
    coef[: len(KNOTS)] = np.log(sigma**2)
    return NoiseModel(KNOTS, coef)


def _fusion(settings: FusionSettings | None = None, *, sigma: float = 0.02, ecm=None,
            voltage_std=None, capacity: float = CAPACITY):
    from bsoc.fusion.estimator import FusionSocEstimator

    return FusionSocEstimator(_lstm(), _noise(sigma), settings or FusionSettings(), capacity,
                              ecm=ecm, voltage_std=voltage_std, name="tiny-fusion")


def _run(estimator, samples: np.ndarray, z: np.ndarray, state: np.ndarray | None = None):
    """The compiled filter along ``samples`` with given LSTM outputs ``z``: SOC, std, state."""
    soc, std = np.empty(len(samples)), np.empty(len(samples))
    start = estimator.initial_state()[estimator.lstm_size:] if state is None else state
    final = kernel.filter_sequence(estimator.buffer, samples, z, np.ones(len(samples), bool),
                                   start, soc, std)
    return soc, std, final


def test_without_the_lstm_measurement_it_is_coulomb_counting() -> None:
    estimator = _fusion(FusionSettings(lstm_measurement=False))
    rows = rows_of(900, seed=4, soc0=0.9)
    preset = estimator.initial_state(soc=0.9, soc_std=0.01)
    stream = StreamSet(estimator)
    stream.states[0] = preset
    streamed = np.array([stream.step(row) for row in rows])
    counted = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY, 0.9)
    np.testing.assert_allclose(streamed, counted, rtol=0, atol=1e-12)
    soc, std, _ = _run(estimator, rows, np.full(len(rows), 0.3), preset[estimator.lstm_size:])
    np.testing.assert_allclose(soc, counted, rtol=0, atol=1e-12)
    # the SOC's variance grows by the random walk only
    elapsed = rows[:, 0] - rows[0, 0]
    np.testing.assert_allclose(std**2, 0.01**2 + 1e-12 * elapsed, rtol=1e-9)


def test_a_perfect_measurement_of_known_variance_is_the_closed_form_kalman_filter() -> None:
    sigma = 0.03
    settings = FusionSettings(bias_fraction=0.0, noise_tau_s=0.5, soc_walk=0.0,
                              init_soc=0.5, init_soc_std=0.2)
    estimator = _fusion(settings, sigma=sigma)
    n = 200
    rows = np.column_stack([np.arange(n, dtype=float), np.full(n, 3.7), np.zeros(n),
                            np.full(n, 25.0)])
    z = 0.6 + sigma * np.random.default_rng(0).normal(size=n)
    soc, std, _ = _run(estimator, rows, z)
    k = np.arange(1, n + 1)
    information = 1 / 0.2**2 + k / sigma**2  # scalar state, no process noise
    mean = (0.5 / 0.2**2 + np.cumsum(z) / sigma**2) / information
    np.testing.assert_allclose(soc, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, 1 / np.sqrt(information), rtol=1e-10)


def test_with_a_perfect_lstm_it_tracks_the_truth_and_says_how_sure_it_is() -> None:
    estimator = _fusion(FusionSettings(offset_std_c=0.01), sigma=0.01)
    rows = rows_of(1500, seed=8, soc0=0.95)
    truth = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY, 0.95)
    soc, std, _ = _run(estimator, rows, truth)
    assert np.abs(soc - truth)[60:].max() < 0.005
    assert (np.abs(soc - truth) <= 2 * std).mean() > 0.95


def test_the_offset_state_learns_an_injected_current_offset() -> None:
    offset_a = 0.05 * CAPACITY  # a 5 % of 1C sensor offset
    estimator = _fusion(FusionSettings(offset_std_c=0.1, bias_fraction=0.5, noise_tau_s=10.0),
                        sigma=0.01)
    rows = np.concatenate([rows_of(1200, seed=s, soc0=0.95) for s in (1,)])
    truth = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY, 0.95)
    measured = rows.copy()
    measured[:, 2] += offset_a
    z = truth + 0.01 * np.random.default_rng(1).normal(size=len(rows))
    soc, _, final = _run(estimator, measured, z)
    assert final[kernel.OFFSET] == pytest.approx(offset_a, rel=0.25)
    blind = _fusion(FusionSettings(offset_std_c=0.0, bias_fraction=0.5, noise_tau_s=10.0),
                    sigma=0.01)
    drifting, _, _ = _run(blind, measured, z)
    assert np.abs(soc - truth)[-300:].mean() < 0.5 * np.abs(drifting - truth)[-300:].mean()


def test_the_ml_fit_recovers_a_known_log_variance_law() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    hats = rng.random(n)
    features = np.column_stack([1 - hats, hats, rng.normal(size=n), rng.random(n)])
    true = np.array([-7.0, -9.0, 0.5, 1.5])
    squared = np.exp(features @ true) * rng.normal(size=n) ** 2
    fitted = fit_coefficients(features, squared, n_knots=2, smoothness=0.0, ridge=0.0)
    np.testing.assert_allclose(fitted, true, atol=0.05)


def test_the_noise_fit_finds_the_temperature_and_start_law_of_synthetic_errors() -> None:
    rng = np.random.default_rng(4)
    sequences, law = [], {}
    for k, temperature in enumerate((0.0, 25.0) * 3):
        rows = rows_of(2000, seed=10 + k, soc0=0.9).copy()
        rows[:, 3] = temperature
        truth = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY, 0.9)
        sigma = (0.03 if temperature == 0.0 else 0.01) * (1 + 3 * np.exp(-rows[:, 0] / 120.0))
        law.setdefault(temperature, []).append(sigma**2)
        sequences.append((rows, truth + sigma * rng.normal(size=len(rows)), truth))
    model, report, (features, squared) = fit_noise_model(sequences, CAPACITY, KNOTS)
    assert report["nll_model"] < report["nll_constant_variance"]
    predicted = model.variance(features)
    for temperature, variances in law.items():
        mask = features[:, KNOTS.index(temperature)] == 1.0
        assert predicted[mask].mean() == pytest.approx(np.concatenate(variances).mean(), rel=0.2)
    assert model.coef[model.feature_names.index("start_decay_1")] > 0.5


def test_bad_samples_never_give_nan_and_leave_the_stream_as_it_was() -> None:
    estimator = _fusion(FusionSettings(offset_std_c=0.01))
    rows = rows_of(120, seed=2, soc0=0.8)
    stream = StreamSet(estimator)
    for row in rows[:60]:
        stream.step(row)
    before = stream.states.copy()
    last = rows[59]
    for bad in ([np.nan, 3.7, -0.2, 20.0], [last[0] + 1, 3.7, np.inf, 20.0],
                [last[0], 3.7, -0.2, 20.0], [last[0] + 1, 3.7, 1e6, 20.0],
                [np.inf, 3.7, -0.2, 20.0]):
        soc = stream.step(bad)
        assert np.isfinite(soc)
        np.testing.assert_array_equal(stream.states, before)
    soc = stream.step([last[0] + 1, np.nan, -0.2, np.nan])  # no voltage, no temperature
    assert np.isfinite(soc) and np.isfinite(stream.states).all()
    np.testing.assert_array_equal(stream.states[0, : estimator.lstm_size],
                                  before[0, : estimator.lstm_size])
    values = [stream.step(row) for row in rows[61:]]
    assert np.isfinite(values).all() and np.isfinite(estimator.soc_std(stream.states)).all()
    fresh = StreamSet(estimator)
    assert np.isfinite(fresh.step([np.nan, np.nan, np.nan, np.nan]))
    np.testing.assert_array_equal(fresh.states[0], estimator.initial_state())


def test_streaming_equals_predict_and_predict_with_std(tmp_path: Path) -> None:
    estimator = _fusion(FusionSettings(offset_std_c=0.01))
    rows = rows_of(400, seed=6, soc0=0.7)
    stream = StreamSet(estimator)
    streamed, spread = [], []
    for row in rows:
        streamed.append(stream.step(row))
        spread.append(estimator.soc_std(stream.states)[0])
    soc, std = estimator.predict_with_std(rows)
    np.testing.assert_allclose(streamed, soc, rtol=0, atol=1e-5)
    np.testing.assert_allclose(spread, std, rtol=1e-4)
    broken = rows.copy()
    broken[100, 1] = np.nan  # not clean: stepped, the same rules
    stepped, _ = estimator.predict_with_std(broken)
    assert np.isfinite(stepped).all()


def test_the_model_folder_round_trips_without_pickle(tmp_path: Path) -> None:
    estimator = _fusion(FusionSettings(offset_std_c=0.01, variance_scale=2.0))
    folder = estimator.save(tmp_path / "fusion")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "config.json", "model.safetensors"]
    loaded = load_estimator(folder)
    assert loaded.kind == "fusion" and loaded.config() == estimator.config()
    rows = rows_of(200, seed=1)
    np.testing.assert_array_equal(loaded.predict(rows), estimator.predict(rows))
    config = json.loads((folder / "config.json").read_text())
    assert config["lstm"]["kind"] == "lstm" and config["settings"]["variance_scale"] == 2.0
    config["settings"]["bias_fraction"] = 2.0
    (folder / "config.json").write_text(json.dumps(config))
    from bsoc.errors import ModelFileError

    with pytest.raises(ModelFileError, match="not a valid fusion config"):
        load_estimator(folder)


def test_with_the_ecm_and_no_lstm_it_is_the_ekf() -> None:
    from bsoc.ekf.estimator import EkfSocEstimator
    from bsoc.ekf.filter import NoiseSettings
    from test_ekf_synthetic import CAPACITY_AH, true_tables

    tables = true_tables()
    ekf = EkfSocEstimator(tables, NoiseSettings(soc_std=1e-5, rc_std=1e-4, voltage_std=5e-3))
    settings = FusionSettings(lstm_measurement=False, voltage_factor=1.0, soc_walk=1e-5,
                              rc_walk_v=1e-4, init_soc=0.5)
    fused = _fusion(settings, ecm=tables, voltage_std=[5e-3], capacity=CAPACITY_AH)
    rows = rows_of(600, seed=9, soc0=0.85).copy()
    rows[:, 2] *= CAPACITY_AH / CAPACITY
    true_soc = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY_AH, 0.85)
    rows[:, 1] = tables.terminal_voltage(rows[:, 0], rows[:, 2], rows[:, 3], true_soc) + 0.01
    soc, std, _ = _run(fused, rows, np.zeros(len(rows)))
    reference, reference_std = ekf.predict_with_std(rows)
    np.testing.assert_allclose(soc, reference, rtol=0, atol=1e-10)
    np.testing.assert_allclose(std, reference_std, rtol=1e-8)


def test_a_start_under_load_takes_the_rc_voltages_as_a_share_of_their_steady_state() -> None:
    from bsoc.ekf.lookup import ecm_point, ocv_inverse
    from test_ekf_synthetic import CAPACITY_AH, true_tables

    sample = np.array([[0.0, 3.55, -0.8 * CAPACITY_AH, 25.0]])
    for fraction in (0.0, 0.5):
        settings = FusionSettings(lstm_measurement=False, voltage_factor=1.0, rc_std_v=0.02,
                                  rc_load_fraction=fraction)
        fused = _fusion(settings, ecm=true_tables(), voltage_std=[5e-3], capacity=CAPACITY_AH)
        _, _, state = _run(fused, sample, np.zeros(1))
        x, P = state[:5], state[5:30].reshape(5, 5)
        ecm = fused.buffer[int(fused.buffer[kernel.ECM_AT]):]
        point = ecm_point(ecm, 0.5, 25.0)
        current = sample[0, 2]
        assert x[kernel.V1] == fraction * point[3] * current
        assert x[kernel.V2] == fraction * point[4] * current
        assert P[kernel.V1, kernel.V1] == 0.02**2 + x[kernel.V1] ** 2
        assert x[kernel.SOC] == ocv_inverse(ecm, 3.55 - point[2] * current - x[kernel.V1]
                                            - x[kernel.V2], 25.0)
    assert x[kernel.V1] != 0.0  # the share moved the start


def test_a_lasting_voltage_error_is_put_down_to_the_slow_voltage_state() -> None:
    from test_ekf_synthetic import CAPACITY_AH, true_tables

    tables = true_tables()
    rows = rows_of(1200, seed=9, soc0=0.85).copy()
    rows[:, 2] *= CAPACITY_AH / CAPACITY
    true_soc = coulomb_soc(rows[:, 0], rows[:, 2], CAPACITY_AH, 0.85)
    rows[:, 1] = tables.terminal_voltage(rows[:, 0], rows[:, 2], rows[:, 3], true_soc) + 0.03
    errors = {}
    for bias_std in (0.0, 0.05):
        settings = FusionSettings(lstm_measurement=False, voltage_factor=1.0,
                                  voltage_bias_std_v=bias_std, voltage_bias_tau_s=1e5)
        fused = _fusion(settings, ecm=tables, voltage_std=[5e-3], capacity=CAPACITY_AH)
        start = fused.initial_state(soc=0.85, soc_std=0.01)[fused.lstm_size:]
        soc, _, state = _run(fused, rows, np.zeros(len(rows)), start)
        assert len(state) == kernel.state_size(6 if bias_std else 5)
        errors[bias_std] = 100 * abs(soc[-1] - true_soc[-1])
    # 30 mV taken as white noise pulls the SOC by points; as a slow error it does not
    assert errors[0.0] > 1.0 and errors[0.05] < 0.3 * errors[0.0]


def test_calibration_is_exact_on_a_constructed_example() -> None:
    errors = np.array([0.5, -1.5, 2.5, -0.9, 1.0, 2.0])
    result = calibration_metrics(errors, np.ones(6))
    assert result["within_1_sigma"] == 3 / 6 and result["within_2_sigma"] == 5 / 6
    assert result["samples"] == 6 and result["mean_std_pct"] == 1.0
    time = np.arange(4.0)
    runs = [CycleRun("a", 0.0, time, np.zeros(4), np.array([0.0, 0.01, 0.03, 0.05]),
                     counted=np.array([True, True, True, False]), soc_std=np.full(4, 0.02)),
            CycleRun("b", 25.0, time, np.zeros(4), np.full(4, 0.01), counted=np.ones(4, bool),
                     soc_std=np.full(4, 0.005))]
    pooled = calibration(runs)
    assert pooled["within_1_sigma"] == 2 / 7 and pooled["within_2_sigma"] == 7 / 7
    by_t = {row["temperature_c"]: row for row in pooled["by_temperature"]}
    assert by_t[0.0]["within_1_sigma"] == 2 / 3 and by_t[25.0]["within_1_sigma"] == 0.0
    assert by_t[25.0]["within_2_sigma"] == 1.0 and by_t[0.0]["samples"] == 3
    assert calibration([CycleRun("c", 0.0, time, np.zeros(4), np.zeros(4),
                                 counted=np.ones(4, bool))]) is None


class _FixedBand:
    """A stand-in filter: the LSTM's SOC passed through with a constant std."""

    def __init__(self, std: float) -> None:
        self.std = std

    def filter_outputs(self, samples: np.ndarray, lstm_soc: np.ndarray):
        return lstm_soc, np.full(len(lstm_soc), self.std)


def _tuning_run(scenario: str, temperature_c: float, errors: np.ndarray):
    from bsoc.fusion.tuning import TuningRun

    truth = np.full(len(errors), 0.5)
    return TuningRun(np.zeros((len(errors), 4)), truth, truth + errors,
                     np.ones(len(errors), bool), temperature_c, scenario, "cycle")


def test_the_tuning_objective_sees_a_miscalibrated_scenario_and_temperature_cell() -> None:
    from bsoc.fusion.tuning import FusionGrid, score

    grid = FusionGrid(coverage=(0.90, 0.98))
    inside, outside = np.full(50, 0.01), np.full(50, 0.05)  # std 0.01: within 2 sigma or not
    wide = _tuning_run("from_start", 25.0, inside[:50])  # 100 % inside: too wide
    narrow = _tuning_run("cold_start", 25.0, np.concatenate([inside[:44], outside[:6]]))  # 88 %
    calibrated = [_tuning_run(scenario, 0.0, np.concatenate([inside[:47], outside[:3]]))
                  for scenario in ("from_start", "cold_start")]  # 94 % each
    result = score(_FixedBand(0.01), [wide, narrow, *calibrated])
    assert result["coverage_2_sigma"] == {"cold_start": {0.0: 0.94, 25.0: 0.88},
                                          "from_start": {0.0: 0.94, 25.0: 1.0}}
    # pooled over the scenarios 25 degC holds 94 %, inside the band: only the cells show it
    assert grid.miss(result["coverage_2_sigma"]) == pytest.approx(0.02)
    assert grid.miss(score(_FixedBand(0.01), calibrated)["coverage_2_sigma"]) == 0.0
    too_narrow = _tuning_run("degraded", 0.0, np.concatenate([inside[:35], outside[:15]]))
    assert grid.miss(score(_FixedBand(0.01), [*calibrated, too_narrow])["coverage_2_sigma"]
                     ) == pytest.approx(0.20)  # the worst cell (70 %) sets the penalty


class _RatioWeighed:
    """A stand-in filter whose error is set by the ratio of the voltage factor to the
    variance scale (what a real filter weighs), least at factor 16 and scale 0.5."""

    ecm = "with the ECM"

    def __init__(self, settings=None) -> None:
        from bsoc.fusion.settings import FusionSettings

        self.settings = settings or FusionSettings()

    def with_settings(self, settings):
        return _RatioWeighed(settings)

    def filter_outputs(self, samples: np.ndarray, lstm_soc: np.ndarray):
        ratio = self.settings.voltage_factor / (32 * self.settings.variance_scale)
        error = abs(np.log2(ratio)) + 0.1 * abs(np.log2(self.settings.variance_scale / 0.5))
        return lstm_soc + 0.01 * error, np.ones(len(lstm_soc))


def test_the_search_weighs_the_voltage_noise_against_the_lstm_noise_jointly() -> None:
    from bsoc.fusion.tuning import FusionGrid, search_settings

    run = _tuning_run("from_start", 25.0, np.zeros(10))
    search = search_settings(_RatioWeighed(), [run], FusionGrid(), lambda *_: None)
    # at the first stage's factor (128) the scale of 4 fits best; the factor alone would
    # then stay at 128, while the two together find the least error
    first = min(search.rows[:len(FusionGrid().lstm_candidates(True))],
                key=lambda row: row["objective_pct"])
    assert (first["voltage_factor"], first["variance_scale"]) == (128.0, 4.0)
    assert (search.chosen["voltage_factor"], search.chosen["variance_scale"]) == (16.0, 0.5)
    assert search.best["rmse_pct"] == 0.0


def test_the_ekf_reports_its_soc_covariance(toy_dataset: Path) -> None:
    from bsoc.ekf.estimator import EkfSocEstimator
    from bsoc.ekf.filter import P_SLICE, NoiseSettings
    from test_ekf_synthetic import true_tables

    ekf = EkfSocEstimator(true_tables(), NoiseSettings(soc_std=1e-5, rc_std=1e-4,
                                                       voltage_std=5e-3))
    assert ekf.soc_std(ekf.initial_state()[None])[0] == ekf.init.unknown_soc_std
    rows = rows_of(100, seed=3)
    stream = StreamSet(ekf)
    for row in rows:
        stream.step(row)
    assert ekf.soc_std(stream.states)[0] == np.sqrt(stream.states[0, P_SLICE.start])
    assert ekf.predict_with_std(rows)[1][-1] == ekf.soc_std(stream.states)[0]
    result = evaluate(ekf, Dataset.load(toy_dataset).split("test"))
    assert 0.0 <= result["calibration"]["within_2_sigma"] <= 1.0
    assert {row["temperature_c"] for row in result["calibration"]["by_temperature"]} == {
        row["temperature_c"] for row in result["by_temperature"]}


def test_bsoc_fuse_fits_a_model_and_refuses_bad_input(toy_dataset: Path, tmp_path: Path) -> None:
    lstm_dir = _lstm().save(tmp_path / "lstm")
    out = tmp_path / "fusion"

    def fuse(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bsoc.cli", "fuse", *args],
                              capture_output=True, text=True, timeout=600)

    done = fuse("--lstm", str(lstm_dir), "--data", str(toy_dataset), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["kind"] == "fusion" and (out / "noise_model.png").is_file()
    model = load_estimator(out)
    assert model.metadata["fit"]["tuning"]["split"] == "val"
    assert set(model.metadata["fit"]["tuning"]["cycles"]) == {
        c.meta.name for c in Dataset.load(toy_dataset).split("val")}
    again = fuse("--lstm", str(lstm_dir), "--data", str(toy_dataset), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    printed = fuse("--lstm", str(lstm_dir), "--data", str(toy_dataset), "--out", str(out),
                   "--force")
    assert printed.returncode == 0, printed.stderr
    for scenario in ("from_start", "cold_start", "degraded_sensors"):  # coverage per cell
        assert f"{scenario}: " in printed.stderr
    assert set(summary["tuning_coverage_2_sigma"]) == {"from_start", "cold_start",
                                                       "degraded_sensors"}
    wrong = fuse("--lstm", str(out), "--data", str(toy_dataset), "--out", str(tmp_path / "x"))
    missing = fuse("--lstm", str(tmp_path / "none"), "--data", str(toy_dataset),
                   "--out", str(tmp_path / "y"))
    for failed, words in ((wrong, "not an LSTM"), (missing, "no model")):
        assert failed.returncode == 2 and words in failed.stderr
        assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
