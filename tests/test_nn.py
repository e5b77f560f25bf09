"""The network and its layers: Table-1 size, cell equations, swappable maps, architecture."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bsoc.errors import ModelFileError
from bsoc.nn import layers
from bsoc.nn.layers import DenseMap, Lstm, WeightMap, build_map
from bsoc.nn.network import NetworkConfig, SocNetwork


class TwoFactorMap(WeightMap):
    """A test map ``x -> (x @ A) @ B``: what a projected or SVD map looks like to the layers."""

    type_name = "two-factor"

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features)
        self.rank = rank
        self.first = nn.Parameter(torch.randn(in_features, rank))
        self.second = nn.Parameter(torch.randn(rank, out_features))

    def factors(self) -> list[torch.Tensor]:
        return [self.first, self.second]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "in_features": self.in_features,
                "out_features": self.out_features, "rank": self.rank}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TwoFactorMap:
        return cls(spec["in_features"], spec["out_features"], spec["rank"])


@pytest.fixture
def two_factor_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(layers.MAP_CLASSES, "two-factor", f"{__name__}:TwoFactorMap")


def test_table1_network_has_exactly_463489_learnables() -> None:
    network = SocNetwork()
    assert network.learnables() == 463_489
    shapes = {(row["layer"], row["parameter"]): tuple(row["shape"])
              for row in network.learnables_table()}
    assert shapes == {
        ("lstm_1", "bias"): (1024,), ("lstm_1", "input_map.weights"): (1024, 3),
        ("lstm_1", "recurrent_map.weights"): (1024, 256),
        ("lstm_2", "bias"): (512,), ("lstm_2", "input_map.weights"): (512, 256),
        ("lstm_2", "recurrent_map.weights"): (512, 128),
        ("fc", "bias"): (1,), ("fc", "weight_map.weights"): (1, 128),
    }
    assert network.lstm_1.input_weights.shape == (1024, 3)
    assert network.lstm_2.recurrent_weights.shape == (512, 128)


def test_fused_forward_equals_the_spelled_out_cell_and_its_gradients() -> None:
    torch.manual_seed(0)
    lstm = Lstm(3, 6)
    x = torch.randn(2, 20, 3)
    state = (torch.randn(2, 6), torch.randn(2, 6))
    fused, (h_f, c_f) = lstm(x, state)
    loss_fused = (fused**2).sum() + c_f.sum()
    grads_fused = torch.autograd.grad(loss_fused, list(lstm.parameters()))
    reference, (h_r, c_r) = lstm.scan(x, state)
    loss_reference = (reference**2).sum() + c_r.sum()
    grads_reference = torch.autograd.grad(loss_reference, list(lstm.parameters()))
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(c_f, c_r, atol=1e-6, rtol=0)
    for fused_grad, reference_grad in zip(grads_fused, grads_reference):
        torch.testing.assert_close(fused_grad, reference_grad, atol=1e-5, rtol=1e-5)


def test_role_named_weights_map_onto_torch_lstm_with_a_merged_bias() -> None:
    torch.manual_seed(1)
    ours = Lstm(3, 5)
    theirs = nn.LSTM(3, 5, batch_first=True)
    with torch.no_grad():
        theirs.weight_ih_l0.copy_(ours.input_weights)
        theirs.weight_hh_l0.copy_(ours.recurrent_weights)
        theirs.bias_ih_l0.copy_(ours.bias)
        theirs.bias_hh_l0.zero_()
    x = torch.randn(3, 15, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-6, rtol=0)


def test_a_swapped_map_reuses_the_cell_and_survives_the_architecture_round_trip(
    two_factor_registered: None,
) -> None:
    torch.manual_seed(2)
    network = SocNetwork(NetworkConfig(hidden_sizes=(8, 4))).eval()
    x = torch.randn(2, 30, 3)
    expected, _ = network(x)
    dense = network.lstm_1.recurrent_map.weights.detach()  # (32, 8): rank 8, exact as 8 x 32
    swapped = TwoFactorMap(8, 32, rank=8)
    with torch.no_grad():
        swapped.first.copy_(torch.eye(8))
        swapped.second.copy_(dense.T)
    network.set_map("lstm_1.recurrent_map", swapped)
    torch.testing.assert_close(network(x)[0], expected, atol=1e-6, rtol=0)
    assert network.lstm_1.scan(x)[0].shape == (2, 30, 8)
    architecture = network.architecture()
    assert architecture["maps"]["lstm_1.recurrent_map"]["type"] == "two-factor"
    rebuilt = SocNetwork.from_architecture(architecture).eval()
    rebuilt.load_state_dict(network.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(x)[0], expected, atol=1e-6, rtol=0)
    assert network.learnables() == SocNetwork(NetworkConfig(hidden_sizes=(8, 4))).learnables() - (
        32 * 8) + (8 * 8 + 8 * 32)


def test_map_shape_and_type_errors_are_clear() -> None:
    network = SocNetwork(NetworkConfig(hidden_sizes=(8, 4)))
    with pytest.raises(ModelFileError, match="needs 8->32"):
        network.set_map("lstm_1.recurrent_map", DenseMap(8, 16))
    with pytest.raises(ModelFileError, match="no layer"):
        network.set_map("lstm_9.input_map", DenseMap(3, 32))
    with pytest.raises(ModelFileError, match="unknown weight-map type"):
        build_map({"type": "nonsense", "in_features": 3, "out_features": 4})


def test_macs_count_every_factor_and_the_cell_update() -> None:
    network = SocNetwork()
    matrices = 1024 * 3 + 1024 * 256 + 512 * 256 + 512 * 128 + 128
    assert network.macs_per_sample() == matrices + 3 * (256 + 128)
