"""A SOC network as plain arrays: what every exporter writes, whatever the map types.

Each weight map is its chain of factors ``x @ F_1 @ F_2`` (:class:`~bsoc.nn.layers.WeightMap`),
each factor float32, or for a quantised map (:class:`~bsoc.compress.quantize.Int8Map`) int8
values with one float32 scale per column, or none (a chain's last factor, its scales folded
into the factor before), kept as stored so that an exporter can compute with the int8
values themselves. Normalisation is kept apart (not folded into the first
factor as the streaming path does), so an int8 first factor stays as it was quantised.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor

from bsoc.compress.quantize import Int8Map
from bsoc.errors import ModelFileError
from bsoc.estimator import SocEstimator
from bsoc.nn.layers import Lstm, WeightMap
from bsoc.nn.network import SocNetwork


@dataclass(frozen=True)
class Factor:
    """``F`` (in, out): float32 ``values``, or int8 ``values`` with float32 ``scales`` (out,)
    or without (``None``: unit scales, the values are the factor)."""

    values: np.ndarray
    scales: np.ndarray | None = None

    @property
    def int8(self) -> bool:
        return self.values.dtype == np.int8

    def dequantised(self) -> np.ndarray:
        """The float32 factor the model computes with (``q * s`` for int8, as bsoc defines it)."""
        if not self.int8:
            return self.values
        values = self.values.astype(np.float32)
        return values if self.scales is None else values * self.scales


@dataclass(frozen=True)
class LstmArrays:
    hidden: int
    input_factors: list[Factor]
    recurrent_factors: list[Factor]
    bias: np.ndarray  # (4H,) float32, gates i, f, g, o


@dataclass(frozen=True)
class NetworkArrays:
    """The whole network: normalisation, LSTM layers in order, the FC layer (one output)."""

    mean: np.ndarray  # (3,) float32
    std: np.ndarray  # (3,) float32
    lstm: list[LstmArrays]
    fc_factors: list[Factor]
    fc_bias: np.ndarray  # (1,) float32
    int16_activations: bool = False  # full integer (bsoc.compress.integer), int8 weights

    @property
    def state_size(self) -> int:
        return 2 * sum(layer.hidden for layer in self.lstm)

    @property
    def int8(self) -> bool:
        return all(f.int8 for f in self.factors())

    def factors(self) -> list[Factor]:
        return [f for layer in self.lstm for f in (*layer.input_factors,
                                                   *layer.recurrent_factors)] + self.fc_factors

    @classmethod
    def of(cls, estimator: SocEstimator) -> NetworkArrays:
        """The arrays of a neural estimator's network; any other model is refused."""
        network = getattr(estimator, "network", None)
        if not isinstance(network, SocNetwork):
            raise ModelFileError(f"a {estimator.kind!r} model has no network to export",
                                 remedy="export an lstm, projected-lstm or svd-lstm model "
                                 "(or its -int8 or -w8a16 version)")
        arrays = cls.of_network(network)
        if getattr(estimator, "int16_activations", False):  # a full-integer (-w8a16) model
            return replace(arrays, int16_activations=True)
        return arrays

    @classmethod
    def of_network(cls, network: SocNetwork) -> NetworkArrays:
        """The arrays of a network (its activations float32)."""
        arrays = cls(
            mean=_float32(network.input_mean), std=_float32(network.input_std),
            lstm=[_lstm(network.get_submodule(name)) for name in network.lstm_names],
            fc_factors=_factors(network.fc.weight_map), fc_bias=_float32(network.fc.bias))
        if arrays.fc_factors[-1].values.shape[1] != 1:
            raise ModelFileError("the network's FC layer has more than one output",
                                 remedy="export a SOC network (one output)")
        if any(f.int8 for f in arrays.factors()) and not arrays.int8:
            raise ModelFileError("the network mixes int8 and float32 weight maps",
                                 remedy="quantise the whole float model with 'bsoc quantize'")
        return arrays


def _float32(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def _factors(layer_map: WeightMap) -> list[Factor]:
    if isinstance(layer_map, Int8Map):
        return [Factor(values.detach().cpu().numpy().copy(),
                       None if scales is None else _float32(scales))
                for values, scales in layer_map.int8_factors()]
    return [Factor(_float32(f)) for f in layer_map.factors()]


def _lstm(layer: Lstm) -> LstmArrays:
    return LstmArrays(layer.hidden_size, _factors(layer.input_map),
                      _factors(layer.recurrent_map), _float32(layer.bias))
