"""Neuron PCA, projected layers, goals, SVD baseline, unpacking: exact where the maths is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stream_set import StreamSet

from bsoc.compress.goals import Goal, compress_network_using_projection, rank_for_level
from bsoc.compress.maps import LowRankMap, ProjectedMap
from bsoc.compress.projection import NeuronPCA, absorb, folded_bias, project_layer
from bsoc.compress.svd import SvdBasis, compress_network_using_svd
from bsoc.compress.unpack import unpack_network
from bsoc.data.dataset import Dataset
from bsoc.data.windows import SequenceSet
from bsoc.errors import ConfigError
from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.layers import DenseMap
from bsoc.nn.network import NetworkConfig, SocNetwork


def _network(hidden: tuple[int, ...] = (16, 8), seed: int = 0) -> SocNetwork:
    torch.manual_seed(seed)
    network = SocNetwork(NetworkConfig(hidden_sizes=hidden))
    network.set_normalisation(np.array([3.7, -0.3, 12.0]), np.array([0.2, 0.4, 10.0]))
    with torch.no_grad():  # larger weights than at initialisation: richer activations
        for parameter in network.parameters():
            parameter.mul_(2.0)
    return network.eval()


def _sequences(lengths: tuple[int, ...] = (120, 75, 200), seed: int = 1) -> SequenceSet:
    rng = np.random.default_rng(seed)
    features = []
    for n in lengths:
        current = np.repeat(rng.choice([-1.0, -0.5, 0.0, 0.3], n // 10 + 1), 10)[:n]
        voltage = 3.7 + 0.05 * current + 0.2 * np.linspace(0.5, -0.5, n) + rng.normal(0, 0.01, n)
        temperature = 12.0 + rng.normal(0, 3.0) + np.zeros(n)
        features.append(np.stack([voltage, current, temperature], 1).astype(np.float32))
    return SequenceSet(features=features, soc=[np.zeros(n, np.float32) for n in lengths],
                       time_s=[np.arange(n, dtype=np.float64) for n in lengths],
                       names=[f"s{k}" for k in range(len(lengths))])


def _outputs(network: SocNetwork, data: SequenceSet) -> list[np.ndarray]:
    with torch.no_grad():
        return [network(torch.from_numpy(x[None]))[0][0].numpy() for x in data.features]


@pytest.fixture(scope="module")
def toy(toy_dataset: Path) -> Dataset:
    return Dataset.load(toy_dataset)


def test_table1_ranks_give_exactly_the_articles_shapes_and_32394_learnables() -> None:
    network = _network(hidden=(256, 128))
    pca = NeuronPCA().fit(network, _sequences((40, 30)))
    compressed, record = compress_network_using_projection(
        network, pca, Goal.parse_ranks(["lstm_1=3,11 lstm_2=11,8"]))
    assert network.learnables() == 463_489
    assert compressed.learnables() == record.learnables_after == 32_394
    shapes = {(row["layer"], row["parameter"]): tuple(row["shape"])
              for row in compressed.learnables_table()}
    # Table 1: InputWeights, RecurrentWeights, Bias, InputProjector, OutputProjector
    assert shapes == {
        ("lstm_1", "input_map.weights"): (1024, 3), ("lstm_1", "recurrent_map.weights"): (1024, 11),
        ("lstm_1", "bias"): (1024,), ("lstm_1", "input_map.projector"): (3, 3),
        ("lstm_1", "recurrent_map.projector"): (256, 11),
        ("lstm_2", "input_map.weights"): (512, 11), ("lstm_2", "recurrent_map.weights"): (512, 8),
        ("lstm_2", "bias"): (512,), ("lstm_2", "input_map.projector"): (256, 11),
        ("lstm_2", "recurrent_map.projector"): (128, 8),
        ("fc", "weight_map.weights"): (1, 128), ("fc", "bias"): (1,),
    }
    assert record.ranks == {"lstm_1": (3, 11), "lstm_2": (11, 8)}


@pytest.mark.parametrize("mean_handling", ["fold-into-bias", "second-moment"])
def test_full_rank_projection_computes_the_original_network(mean_handling: str) -> None:
    network, data = _network(), _sequences()
    pca = NeuronPCA(mean_handling).fit(network, data)
    projected, record = compress_network_using_projection(
        network, pca, Goal(explained_variance=1.0), only_if_smaller=False)
    assert all(plan.projected for plan in record.plans.values())
    assert isinstance(projected.lstm_2.recurrent_map, ProjectedMap)
    for original, compressed in zip(_outputs(network, data), _outputs(projected, data)):
        np.testing.assert_allclose(compressed, original, atol=1e-5, rtol=0)


def test_projected_lstm_layer_holds_the_articles_absorbed_weights_and_folded_bias() -> None:
    """W_in = W Q_in, W_rec = R Q_out and
    b' = b + W (I - Q_in Q_in^T) mu_in + R (I - Q_out Q_out^T) mu_out, read back from the layer."""
    rng = np.random.default_rng(11)
    layer = _network().lstm_2
    w = layer.input_weights.detach().double().numpy()  # (4H, a)
    r = layer.recurrent_weights.detach().double().numpy()  # (4H, H)
    b = layer.bias.detach().double().numpy()
    q_in, _ = np.linalg.qr(rng.normal(size=(layer.input_size, 5)))
    q_out, _ = np.linalg.qr(rng.normal(size=(layer.hidden_size, 3)))
    mu_in, mu_out = rng.normal(size=layer.input_size), rng.normal(size=layer.hidden_size)
    project_layer(layer, {"input": (q_in, mu_in), "output": (q_out, mu_out)})
    weights = {name: p.detach().double().numpy() for name, p in layer.named_parameters()}
    np.testing.assert_allclose(weights["input_map.weights"], w @ q_in, atol=1e-6)
    np.testing.assert_allclose(weights["recurrent_map.weights"], r @ q_out, atol=1e-6)
    np.testing.assert_allclose(weights["input_map.projector"], q_in, atol=1e-7)
    np.testing.assert_allclose(weights["recurrent_map.projector"], q_out, atol=1e-7)
    folded = (b + w @ (np.eye(len(mu_in)) - q_in @ q_in.T) @ mu_in
              + r @ (np.eye(len(mu_out)) - q_out @ q_out.T) @ mu_out)
    np.testing.assert_allclose(weights["bias"], folded, atol=1e-5)
    x, h = rng.normal(size=(4, layer.input_size)), rng.normal(size=(4, layer.hidden_size))
    with torch.no_grad():
        gates = (layer.input_map(torch.from_numpy(x).float())
                 + layer.recurrent_map(torch.from_numpy(h).float()) + layer.bias).double().numpy()
    np.testing.assert_allclose(gates, (x @ q_in) @ (w @ q_in).T + (h @ q_out) @ (r @ q_out).T
                               + folded, atol=1e-4)


def test_streamed_pca_equals_numpy_on_all_activations_and_is_deterministic() -> None:
    network, data = _network(), _sequences()
    # small batches and chunks: padding and carried states must not change the sums
    pca = NeuronPCA(batch_size=2, chunk_steps=17).fit(network, data)
    with torch.no_grad():
        h1 = [network.lstm_1((torch.from_numpy(x[None]) - network.input_mean)
                             / network.input_std)[0][0] for x in data.features]
        h2 = [network.lstm_2(h[None])[0][0] for h in h1]
    for site, rows in (("lstm_1.output", h1), ("lstm_2.input", h1), ("fc.input", h2)):
        rows = torch.cat(rows).double().numpy()
        np.testing.assert_allclose(pca.mean_[site], rows.mean(0), atol=1e-6)
        np.testing.assert_allclose(pca.covariance_[site], np.cov(rows.T, bias=True), atol=1e-6)
    assert pca.n_samples_ == int(data.lengths.sum())
    again = NeuronPCA(batch_size=2, chunk_steps=17).fit(network, data)
    for site in pca.sites:
        np.testing.assert_array_equal(pca.components_[site], again.components_[site])
        assert np.all(np.diff(pca.eigenvalues_[site]) <= 0)
        assert pca.curve(site)[-1] == 1.0


def test_explained_variance_rank_is_the_smallest_that_meets_the_goal() -> None:
    rng = np.random.default_rng(3)
    activations = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) * rng.uniform(0.1, 3, 12)
    pca = NeuronPCA().fit_arrays({"lstm_1.input": activations})
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(activations.T, bias=True)))[::-1]
    np.testing.assert_allclose(pca.eigenvalues_["lstm_1.input"], eigenvalues, rtol=1e-9)
    ratio = np.cumsum(eigenvalues) / eigenvalues.sum()
    for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, float(ratio[4])):
        expected = min(k + 1 for k in range(12) if ratio[k] >= level - 1e-12)
        assert rank_for_level(pca.curve("lstm_1.input"), level) == expected
    assert rank_for_level(pca.curve("lstm_1.input"), 1.0) == 12
    q = pca.projector("lstm_1.input", 5)
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-12)


@pytest.mark.parametrize("mean_handling, extra_rank", [("fold-into-bias", 0), ("second-moment", 1)])
def test_each_mean_handling_is_exact_on_an_offset_plus_a_kept_rank_component(
    mean_handling: str, extra_rank: int
) -> None:
    rng = np.random.default_rng(5)
    rank, width = 3, 10
    offset = rng.normal(2.0, 1.0, width)  # large mean, like LSTM hidden states
    activations = offset + rng.normal(size=(400, rank)) @ rng.normal(size=(rank, width))
    pca = NeuronPCA(mean_handling).fit_arrays({"s": activations})
    weight, bias = rng.normal(size=(7, width)), rng.normal(size=7)
    exact = activations @ weight.T + bias

    def projected(kept: int) -> np.ndarray:
        q = pca.projector("s", kept)
        layer_map = absorb(weight, q).double()
        with torch.no_grad():
            mapped = layer_map(torch.from_numpy(activations)).numpy()
        return mapped + bias + folded_bias(weight, q, pca.offset("s"))

    np.testing.assert_allclose(projected(rank + extra_rank), exact, atol=2e-5)  # float32 weights
    # one rank fewer loses a real direction: the test can fail
    assert np.abs(projected(rank + extra_rank - 1) - exact).max() > 1e-2


def test_learnables_reduction_goal_is_met_with_the_highest_level_that_fits() -> None:
    network, data = _network(), _sequences()
    pca = NeuronPCA().fit(network, data)
    _, record = compress_network_using_projection(network, pca, Goal(learnables_reduction=0.5))
    budget = 0.5 * network.learnables()
    assert record.learnables_after <= budget
    higher = sorted({float(v) for site in ("lstm_1.input", "lstm_1.output", "lstm_2.input",
                                           "lstm_2.output", "fc.input")
                     for v in pca.curve(site) if v > record.level})
    _, above = compress_network_using_projection(network, pca, Goal(explained_variance=higher[0]))
    assert above.learnables_after > budget


def test_a_rank_multiple_rounds_searched_ranks_up_never_past_the_neurons() -> None:
    curve = np.array([0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0])  # eight neurons
    assert [rank_for_level(curve, level, 4) for level in (0.5, 0.8, 0.9, 0.95, 0.995)] == \
        [4, 4, 4, 8, 8]
    assert rank_for_level(curve, 0.7, 3) == 3 and rank_for_level(curve, 0.9, 3) == 6
    assert rank_for_level(curve[:3], 0.75, 4) == 3  # all of three neurons, not four

    network, data = _network(), _sequences()
    pca = NeuronPCA().fit(network, data)
    plain = compress_network_using_projection(network, pca, Goal(learnables_reduction=0.5))[1]
    goal = Goal(learnables_reduction=0.5, rank_multiple=4)
    _, record = compress_network_using_projection(network, pca, goal)
    assert record.learnables_after <= 0.5 * network.learnables()
    for layer, plan in record.plans.items():
        widths = {reads: pca.curve(f"{layer}.{reads}").size for reads in plan.ranks}
        assert all(rank % 4 == 0 or rank == widths[reads] for reads, rank in plan.ranks.items())
    assert plain.ranks != record.ranks  # the toy's plain ranks are not all multiples of four
    assert goal.to_json() == {"learnables_reduction": 0.5, "rank_multiple": 4}
    with pytest.raises(ConfigError, match="explicit"):
        Goal(ranks={"lstm_1": (4, 4)}, rank_multiple=4)
    with pytest.raises(ConfigError, match="at least 1"):
        Goal(explained_variance=0.9, rank_multiple=0)


def test_layers_that_would_not_shrink_are_left_alone_and_reported() -> None:
    network, data = _network(), _sequences()
    pca = NeuronPCA().fit(network, data)
    compressed, record = compress_network_using_projection(network, pca,
                                                           Goal(explained_variance=0.9))
    assert not record.plans["fc"].projected  # 8 -> 1: any rank b costs 9b >= 8
    assert isinstance(compressed.fc.weight_map, DenseMap)
    assert any(note.startswith("not projected") for note in record.skipped())
    config = record.to_json()
    assert config["explained_variance"]["fc.input"]["rank"] is None
    assert config["learnables_before"] == network.learnables() > config["learnables_after"]
    with pytest.raises(ConfigError, match="exactly one"):
        Goal(explained_variance=0.9, learnables_reduction=0.5)
    with pytest.raises(ConfigError, match="out of range"):
        compress_network_using_projection(network, pca, Goal(ranks={"lstm_1": (4, 2)}))
    with pytest.raises(ConfigError, match="out of reach"):
        compress_network_using_projection(network, pca, Goal(learnables_reduction=0.99))


def test_projection_beats_svd_at_equal_rank_on_correlated_activations() -> None:
    """Data near a 3-d affine subspace the weights do not favour: PCA finds it, SVD cannot."""
    rng = np.random.default_rng(7)
    network = _network()
    width, rank = network.lstm_2.input_size, 3
    subspace = rng.normal(size=(rank, width))
    activations = (rng.normal(0.3, 0.2, width) + rng.normal(size=(600, rank)) @ subspace
                   + 0.01 * rng.normal(size=(600, width)))
    weight = network.lstm_2.input_map.weights.detach().double().numpy()
    exact = activations @ weight.T
    pca = NeuronPCA().fit_arrays({"lstm_2.input": activations})
    svd = SvdBasis(network)
    errors = {}
    for name, basis in (("projection", pca), ("svd", svd)):
        q = basis.projector("lstm_2.input", rank)
        offset = basis.offset("lstm_2.input")
        approx = activations @ q @ (weight @ q).T + folded_bias(weight, q, offset)
        errors[name] = np.sqrt(np.mean((approx - exact) ** 2))
    assert errors["projection"] < 0.1 * errors["svd"]


def test_svd_at_the_projection_ranks_has_the_same_learnables() -> None:
    network, data = _network(), _sequences()
    pca = NeuronPCA().fit(network, data)
    projected, record = compress_network_using_projection(network, pca,
                                                          Goal(explained_variance=0.95))
    svd_network, svd_record = compress_network_using_svd(network, Goal(ranks=record.ranks))
    assert svd_network.learnables() == projected.learnables() < network.learnables()
    assert isinstance(svd_network.lstm_1.recurrent_map, LowRankMap)
    weight = network.lstm_1.recurrent_map.weights.detach().double().numpy()
    u, s, vt = np.linalg.svd(weight)
    b = record.ranks["lstm_1"][1]
    np.testing.assert_allclose(svd_network.lstm_1.recurrent_map.dense_weight().detach().numpy(),
                               (u[:, :b] * s[:b]) @ vt[:b], atol=1e-5)
    assert "singular_value_energy" in svd_record.to_json()


def test_projected_model_streams_like_its_batch_forward_through_thin_factors(
    toy: Dataset, tmp_path: Path,
) -> None:
    network = _network()
    pca = NeuronPCA().fit(network, toy.split("train"))
    projected, record = compress_network_using_projection(network, pca, Goal(ranks={
        "lstm_1": (2, 5), "lstm_2": (5, 3)}))
    estimator = LstmSocEstimator(projected, kind="projected-lstm", name="p",
                                 metadata={"compression": record.to_json()})
    samples = toy.split("test")[0].frame[["time_s", "voltage_v", "current_a",
                                          "temperature_c"]].to_numpy()
    streams = StreamSet(estimator)
    streamed = np.array([streams.step(row) for row in samples])
    np.testing.assert_allclose(streamed, estimator.predict(samples), atol=1e-5, rtol=0)
    shapes = [[f.shape for f in layer.recurrent_factors] for layer in estimator._stepper.layers]
    assert shapes == [[(16, 5), (5, 64)], [(8, 3), (3, 32)]]  # never re-densified
    estimator.save(tmp_path / "p")
    loaded = load_estimator(tmp_path / "p")
    assert loaded.kind == "projected-lstm" and loaded.learnables() == record.learnables_after
    np.testing.assert_array_equal(loaded.predict(samples), estimator.predict(samples))
    plain = unpack_network(projected)
    assert all(isinstance(m, DenseMap) for m in plain.weight_maps().values())
    assert plain.learnables() == network.learnables()
    with torch.no_grad():
        x = torch.from_numpy(samples[None, :, 1:4].astype(np.float32))
        np.testing.assert_allclose(plain(x)[0].numpy(), projected(x)[0].numpy(), atol=1e-6)
