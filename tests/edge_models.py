"""Small float networks of every LSTM kind (lstm, projected-lstm, svd-lstm) for the int8 and
export tests: random weights, a few times larger than at initialisation, so the gates leave
their linear range and a wrong equation or rounding shows."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from bsoc.cli import main
from bsoc.compress.goals import Goal
from bsoc.compress.projection import absorb
from bsoc.compress.quantize import Int8Map, quantize_factor, quantize_network
from bsoc.compress.svd import compress_network_using_svd
from bsoc.data.dataset import Dataset
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import NetworkConfig, SocNetwork

KINDS = ("lstm", "projected-lstm", "svd-lstm")
ALL_KINDS = (*KINDS, *(f"{kind}-int8" for kind in KINDS))


def _plain(hidden: tuple[int, ...], seed: int) -> SocNetwork:
    torch.manual_seed(seed)
    network = SocNetwork(NetworkConfig(hidden_sizes=hidden))
    network.set_normalisation(np.array([3.7, -0.3, 12.0]), np.array([0.2, 0.4, 10.0]))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    return network.eval()


def _projected(network: SocNetwork, seed: int) -> SocNetwork:
    """Every map of ``network`` projected onto a random orthonormal basis of half its inputs."""
    rng = np.random.default_rng(seed)
    for address, layer_map in network.weight_maps().items():
        weight = layer_map.dense_weight().detach().double().numpy()
        rank = max(1, layer_map.in_features // 2)
        basis, _ = np.linalg.qr(rng.normal(size=(layer_map.in_features, rank)))
        network.set_map(address, absorb(weight, basis))
    return network


def float_estimator(kind: str, hidden: tuple[int, ...] = (16, 8), seed: int = 0
                    ) -> LstmSocEstimator:
    network = _plain(hidden, seed)
    if kind == "projected-lstm":
        network = _projected(network, seed)
    elif kind == "svd-lstm":
        network, _ = compress_network_using_svd(network, Goal(learnables_reduction=0.5))
    return LstmSocEstimator(network.eval(), kind=kind, name=kind)


def estimator_of_kind(kind: str) -> LstmSocEstimator:
    """A float model of ``kind``, or the int8 version of one for ``<kind>-int8``."""
    source = float_estimator(kind.removesuffix("-int8"))
    if not kind.endswith("-int8"):
        return source
    return LstmSocEstimator(quantize_network(source.network), kind=kind, name=kind)


def per_output_network(network: SocNetwork) -> SocNetwork:
    """``network`` quantised as bsoc stored int8 maps before it folded a chain's last scales:
    every factor per output channel, with its own scales (the format of older int8 folders)."""
    quantized = copy.deepcopy(network)
    for address, layer_map in network.weight_maps().items():
        factors = layer_map.factors()
        old = Int8Map(layer_map.spec(), [tuple(f.shape) for f in factors])
        with torch.no_grad():
            for k, factor in enumerate(factors):
                values, scales = quantize_factor(factor)
                getattr(old, f"values_{k}").copy_(values)
                getattr(old, f"scales_{k}").copy_(scales)
        quantized.set_map(address, old)
    return quantized.eval()


def cycle_samples(toy_dataset: Path, n: int | None = None) -> np.ndarray:
    """Rows ``[time_s, voltage_v, current_a, temperature_c]`` of the toy test cycle."""
    frame = Dataset.load(toy_dataset).split("test")[0].frame
    return frame[["time_s", "voltage_v", "current_a", "temperature_c"]].to_numpy()[:n]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``bsoc ARGV`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code), captured.out, captured.err
