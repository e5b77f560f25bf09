"""The per-sample streaming path of a :class:`~bsoc.nn.network.SocNetwork`.

A live cell sends one sample at a time, so a step is a few small matrix-vector products
and PyTorch's per-operator overhead (dispatch, autograd bookkeeping, tensor allocation)
would dominate. :class:`StreamingStepper` instead freezes a copy of the weights as

* every map's factors, pre-transposed float32 (``x @ F``), so a projected map costs its two
  thin products and is never re-densified;
* the input normalisation folded into ``lstm_1``'s first input factor and bias;

packed into one buffer that the fused, compiled kernel of :mod:`bsoc.nn.kernel` steps in a
single call. The equations are those of :meth:`bsoc.nn.layers.Lstm.step` (gate order
i, f, g, o); tests hold this path to the batched forward pass within 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch

from bsoc.nn.kernel import PackedNetwork
from bsoc.nn.network import SocNetwork


@dataclass
class _LstmArrays:
    input_factors: list[np.ndarray]  # (in_k, out_k) float32
    recurrent_factors: list[np.ndarray]
    bias: np.ndarray  # (4H,)
    hidden: int


def _factors(layer_map: torch.nn.Module) -> list[np.ndarray]:
    return [np.ascontiguousarray(f.detach().cpu().numpy(), dtype=np.float32)
            for f in layer_map.factors()]


class StreamingStepper:
    """Frozen copy of a network's weights that advances B streams by one sample.

    State layout per stream: ``concat(h_1, c_1, h_2, c_2, ...)`` (``state_size`` floats).
    """

    def __init__(self, network: SocNetwork) -> None:
        mean = network.input_mean.detach().cpu().numpy().astype(np.float64)
        std = network.input_std.detach().cpu().numpy().astype(np.float64)
        self.layers: list[_LstmArrays] = []
        for k, name in enumerate(network.lstm_names):
            lstm = network.get_submodule(name)
            inputs = _factors(lstm.input_map)
            bias = lstm.bias.detach().cpu().numpy().astype(np.float64)
            if k == 0:  # ((x - m) / s) @ F1 @ F2.. = x @ (F1 / s) @ F2.. - (m / s) @ F1 @ F2..
                bias = bias - reduce(np.matmul, [(mean / std)[None, :], *inputs]).ravel()
                inputs[0] = (inputs[0] / std[:, None]).astype(np.float32)
            self.layers.append(_LstmArrays(inputs, _factors(lstm.recurrent_map),
                                           bias.astype(np.float32), lstm.hidden_size))
        self.fc_factors = _factors(network.fc.weight_map)
        self.fc_bias = network.fc.bias.detach().cpu().numpy().astype(np.float32)
        self.state_size = 2 * sum(layer.hidden for layer in self.layers)
        self.packed = PackedNetwork.pack(
            [(layer.input_factors, layer.recurrent_factors, layer.bias) for layer in self.layers],
            (self.fc_factors, self.fc_bias))

    def step(self, samples: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``samples`` (B, 4) raw time, V, I, T; ``states`` (B, S) -> SOC (B,), new states."""
        return self.packed.step(samples, states)

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """SOC (B, T) of whole sequences ``samples`` (B, T, 4) from the zero state."""
        return self.packed.predict(samples)
