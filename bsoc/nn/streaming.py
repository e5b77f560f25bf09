"""The per-sample streaming path of a :class:`~bsoc.nn.network.SocNetwork`, in numpy.

A live cell sends one sample at a time, so a step is a few small matrix-vector products.
PyTorch's per-operator overhead (dispatch, autograd bookkeeping, tensor allocation) then
dominates; this path instead keeps

* every map's factors as pre-transposed, C-contiguous float32 arrays (``x @ F``), so a
  projected map costs its two thin products, not the dense equivalent;
* the input normalisation folded into ``lstm_1``'s first input factor and bias;
* per-thread work buffers for each batch size, written with ``out=`` (the only allocation
  per call is the returned state and SOC arrays, which the caller keeps).

The equations are those of :meth:`bsoc.nn.layers.Lstm.step` (gate order i, f, g, o);
tests hold this path to the batched forward pass within 1e-5.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch
from scipy.special import expit

from bsoc.nn.network import SocNetwork

_MAX_CACHED_BATCH_SIZES = 8


@dataclass
class _LstmArrays:
    input_factors: list[np.ndarray]  # (in_k, out_k) float32
    recurrent_factors: list[np.ndarray]
    bias: np.ndarray  # (4H,)
    hidden: int


def _factors(layer_map: torch.nn.Module) -> list[np.ndarray]:
    return [np.ascontiguousarray(f.detach().cpu().numpy(), dtype=np.float32)
            for f in layer_map.factors()]


class NumpyStepper:
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
        self._local = threading.local()

    def _buffers(self, batch: int) -> dict[str, list[np.ndarray]]:
        cache = getattr(self._local, "cache", None)
        if cache is None or len(cache) > _MAX_CACHED_BATCH_SIZES:
            cache = self._local.cache = {}
        if batch not in cache:
            f32 = np.float32
            cache[batch] = {
                "input": [[np.empty((batch, f.shape[1]), f32) for f in layer.input_factors]
                          for layer in self.layers],
                "recurrent": [[np.empty((batch, f.shape[1]), f32) for f in layer.recurrent_factors]
                              for layer in self.layers],
                "h": [np.empty((batch, layer.hidden), f32) for layer in self.layers],
                "c": [np.empty((batch, layer.hidden), f32) for layer in self.layers],
                "tmp": [np.empty((batch, layer.hidden), f32) for layer in self.layers],
                "fc": [np.empty((batch, f.shape[1]), f32) for f in self.fc_factors],
                "x": [np.empty((batch, self.layers[0].input_factors[0].shape[0]), f32)],
            }
        return cache[batch]

    @staticmethod
    def _apply(x: np.ndarray, factors: list[np.ndarray], outs: list[np.ndarray]) -> np.ndarray:
        for factor, out in zip(factors, outs):
            x = np.matmul(x, factor, out=out)
        return x

    def step(self, features: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``features`` (B, 3) raw V, I, T; ``states`` (B, S) -> SOC (B,), new states (B, S)."""
        batch = features.shape[0]
        buf = self._buffers(batch)
        x = buf["x"][0]
        np.copyto(x, features, casting="unsafe")
        new_states = np.empty((batch, self.state_size), dtype=np.float64)
        offset = 0
        for k, layer in enumerate(self.layers):
            hidden = layer.hidden
            h, c, tmp = buf["h"][k], buf["c"][k], buf["tmp"][k]
            np.copyto(h, states[:, offset : offset + hidden], casting="unsafe")
            np.copyto(c, states[:, offset + hidden : offset + 2 * hidden], casting="unsafe")
            gates = self._apply(x, layer.input_factors, buf["input"][k])  # (B, 4H)
            gates += self._apply(h, layer.recurrent_factors, buf["recurrent"][k])
            gates += layer.bias
            i, f, g, o = (gates[:, j * hidden : (j + 1) * hidden] for j in range(4))
            expit(gates[:, : 2 * hidden], out=gates[:, : 2 * hidden])  # i, f
            np.tanh(g, out=g)
            expit(o, out=o)
            np.multiply(f, c, out=c)  # c_t = f * c_{t-1} + i * g
            np.multiply(i, g, out=tmp)
            c += tmp
            np.tanh(c, out=tmp)  # h_t = o * tanh(c_t)
            np.multiply(o, tmp, out=h)
            new_states[:, offset : offset + hidden] = h
            new_states[:, offset + hidden : offset + 2 * hidden] = c
            offset += 2 * hidden
            x = h
        out = self._apply(x, self.fc_factors, buf["fc"])
        out += self.fc_bias
        return expit(out[:, 0]).astype(np.float64), new_states
