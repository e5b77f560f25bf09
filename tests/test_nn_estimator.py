"""LstmSocEstimator: streaming equals batch, state handling, model folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_set import StreamSet
from test_nn import TwoFactorMap, two_factor_registered  # noqa: F401

from bsoc.data.dataset import Dataset
from bsoc.errors import ModelFileError, OverwriteRefusedError
from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork
from bsoc.nn.streaming import StreamingStepper


def _samples(toy_dataset: Path, n: int | None = None) -> np.ndarray:
    frame = Dataset.load(toy_dataset).split("test")[0].frame
    return frame[["time_s", "voltage_v", "current_a", "temperature_c"]].to_numpy()[:n]


def _estimator(hidden: tuple[int, ...] = (16, 8), seed: int = 0) -> LstmSocEstimator:
    torch.manual_seed(seed)
    network = SocNetwork(NetworkConfig(hidden_sizes=hidden))
    network.set_normalisation(np.array([3.7, -0.3, 12.0]), np.array([0.2, 0.4, 10.0]))
    with torch.no_grad():  # larger weights than at initialisation: a harder equality test
        for parameter in network.parameters():
            parameter.mul_(3.0)
    return LstmSocEstimator(network, name="test")


def test_streaming_sample_by_sample_equals_predict(toy_dataset: Path) -> None:
    estimator = _estimator()
    samples = _samples(toy_dataset)
    streams = StreamSet(estimator)
    streamed = np.array([streams.step(row) for row in samples])
    batch = estimator.predict(samples)
    assert streamed.shape == batch.shape == (len(samples),)
    np.testing.assert_allclose(streamed, batch, atol=1e-5, rtol=0)
    assert 0.0 < batch.min() and batch.max() < 1.0


def test_table1_streaming_equals_predict(toy_dataset: Path) -> None:
    estimator = _estimator(hidden=(256, 128))
    samples = _samples(toy_dataset, 300)
    streams = StreamSet(estimator)
    streamed = np.array([streams.step(row) for row in samples])
    np.testing.assert_allclose(streamed, estimator.predict(samples), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden", [(16, 8), (256, 128)])
def test_predict_equals_the_networks_pytorch_forward_pass(toy_dataset: Path,
                                                         hidden: tuple[int, ...]) -> None:
    """The compiled batched pass is held to the network's own (fused PyTorch) forward."""
    estimator = _estimator(hidden=hidden)
    sequences = [_samples(toy_dataset, 300), _samples(toy_dataset, 120)]
    features = np.zeros((2, 300, 3), np.float32)
    for row, samples in zip(features, sequences):
        row[: len(samples)] = samples[:, 1:4]
    with torch.inference_mode():
        want, _ = estimator.network(torch.from_numpy(features))
    for k, got in enumerate(estimator.predict_many(sequences)):
        np.testing.assert_allclose(got, want[k, : len(got)].numpy(), atol=1e-5, rtol=0)


def test_predicting_many_sequences_together_equals_one_by_one(toy_dataset: Path) -> None:
    estimator = _estimator()
    samples = _samples(toy_dataset)
    sequences = [samples[:50], samples, samples[100:400], samples[:1]]
    together = estimator.predict_many(sequences)
    assert [len(s) for s in together] == [50, len(samples), 300, 1]
    for alone, batched in zip(sequences, together):  # end padding never reaches the outputs
        np.testing.assert_allclose(batched, estimator.predict(alone), atol=1e-6, rtol=0)
    assert estimator.predict_many([]) == []
    with pytest.raises(Exception, match=r"samples \(T, 4\)"):
        estimator.predict_many([samples, samples[:, :3]])


def test_many_streams_are_independent_and_inputs_untouched(toy_dataset: Path) -> None:
    estimator = _estimator()
    samples = _samples(toy_dataset, 120)
    # stream 0 starts at sample 0, stream 1 at sample 40, stream 2 at sample 80
    starts = [0, 40, 80]
    states = np.repeat(estimator.initial_state()[None], 3, axis=0)
    out = np.full((3, 120), np.nan)
    for t in range(120):
        active = [s for s, start in enumerate(starts) if t >= start]
        rows = samples[[t] * len(active)]
        before_rows, before_states = rows.copy(), states[active].copy()
        soc, new = estimator.step_batch(rows, states[active])
        np.testing.assert_array_equal(rows, before_rows)
        np.testing.assert_array_equal(states[active], before_states)
        states[active] = new
        out[active, t] = soc
    for stream, start in enumerate(starts):
        np.testing.assert_allclose(out[stream, start:], estimator.predict(samples[start:]),
                                   atol=1e-5, rtol=0)


def test_state_layout_is_h_and_c_per_layer() -> None:
    estimator = _estimator(hidden=(16, 8))
    assert estimator.initial_state().shape == (2 * 16 + 2 * 8,)
    assert not estimator.initial_state().any()
    with pytest.raises(Exception, match="samples \\(B, 4\\)"):
        estimator.step_batch(np.zeros((2, 3)), np.zeros((2, 48)))


def test_multi_factor_maps_stream_through_their_factors(
    toy_dataset: Path, two_factor_registered: None  # noqa: F811
) -> None:
    estimator = _estimator()
    network = estimator.network
    torch.manual_seed(5)
    network.set_map("lstm_1.input_map", TwoFactorMap(3, 64, rank=2))
    network.set_map("fc.weight_map", TwoFactorMap(8, 1, rank=3))
    projected = LstmSocEstimator(network, kind="projected-lstm")
    stepper = StreamingStepper(network)
    assert [f.shape for f in stepper.layers[0].input_factors] == [(3, 2), (2, 64)]
    samples = _samples(toy_dataset, 200)
    streams = StreamSet(projected)
    streamed = np.array([streams.step(row) for row in samples])
    np.testing.assert_allclose(streamed, projected.predict(samples), atol=1e-5, rtol=0)


def test_model_folder_round_trip(tmp_path: Path, toy_dataset: Path,
                                 two_factor_registered: None) -> None:  # noqa: F811
    estimator = _estimator()
    estimator.network.set_map("lstm_2.recurrent_map", TwoFactorMap(8, 32, rank=2))
    estimator = LstmSocEstimator(estimator.network, kind="projected-lstm", name="p",
                                 metadata={"seed": 7, "data": {"name": "toy"}})
    folder = estimator.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "projected-lstm" and config["seed"] == 7
    assert config["learnables"] == estimator.learnables()
    assert config["normalisation"]["mean"] == pytest.approx([3.7, -0.3, 12.0])
    loaded = load_estimator(folder)
    assert isinstance(loaded, LstmSocEstimator)
    assert (loaded.kind, loaded.name, loaded.metadata["seed"]) == ("projected-lstm", "p", 7)
    samples = _samples(toy_dataset, 100)
    np.testing.assert_array_equal(loaded.predict(samples), estimator.predict(samples))
    with pytest.raises(OverwriteRefusedError):
        estimator.save(folder)
    estimator.save(folder, force=True)


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    _estimator(hidden=(16, 8)).save(tmp_path / "a")
    _estimator(hidden=(12, 8)).save(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ModelFileError, match="does not match the architecture"):
        load_estimator(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_estimator(tmp_path / "a")


def test_saved_weights_are_as_readable_as_the_config(tmp_path: Path) -> None:
    folder = _estimator().save(tmp_path / "model")
    weights, config = (folder / "model.safetensors").stat(), (folder / "config.json").stat()
    assert weights.st_mode & 0o777 == config.st_mode & 0o777
