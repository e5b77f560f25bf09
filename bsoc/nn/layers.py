"""Layers of the SOC network: weight maps, the LSTM layer and the fully connected layer.

A *weight map* is the linear part of a layer without its bias: ``x -> W x``. The LSTM and
FC layers hold their maps as swappable sub-modules, so a compressed layer is the same
layer class with a different map (a projected map ``W_in (Q_in^T x)``, a low-rank SVD
map, ...): the LSTM cell equations exist once, here.

Every map is a chain of *factors*: ``map(x) = x @ F_1 @ F_2 ...`` on row vectors, with
``F_k`` of shape (in_k, out_k). A plain :class:`DenseMap` has one factor, ``weights^T``; a
projected map has two, ``Q`` then ``W_in^T``. From the factors come the forward pass, the
equivalent dense matrix (for PyTorch's fused LSTM kernel) and the pre-transposed arrays
of the compiled streaming path, so a new map only declares its parameters and factors.

Maps are built from a JSON spec (``{"type": "dense", "in_features": .., "out_features": ..}``)
through :data:`MAP_CLASSES`, imported lazily, so a saved model of any kind reloads from
its ``config.json`` alone.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from functools import reduce
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bsoc.errors import ModelFileError
from bsoc.lazy import registered

# type name -> "module:Class"; the compression package adds its maps here.
MAP_CLASSES: dict[str, str] = {
    "dense": "bsoc.nn.layers:DenseMap",
    "projected": "bsoc.compress.maps:ProjectedMap",
    "low-rank": "bsoc.compress.maps:LowRankMap",
    "int8": "bsoc.compress.quantize:Int8Map",
}

LstmState = tuple[Tensor, Tensor]  # (h, c), each (B, H)


class WeightMap(nn.Module):
    """A bias-free linear map ``R^in -> R^out`` given as a chain of factors."""

    type_name: ClassVar[str]

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    @abstractmethod
    def factors(self) -> list[Tensor]:
        """Matrices ``F_1 .. F_k`` (in_k, out_k) with ``map(x) = x @ F_1 @ ... @ F_k``."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON description, enough to rebuild an untrained map of the same shapes."""

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> WeightMap:
        """Build an (untrained) map from :meth:`spec` output."""

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        for factor in self.factors():
            x = x @ factor
        return x

    def dense_weight(self) -> Tensor:
        """The equivalent (out, in) matrix; differentiable, so training flows into the factors."""
        return reduce(torch.matmul, self.factors()).T

    def macs(self) -> int:
        """Multiply-accumulates of one application to one vector, factor by factor."""
        return sum(f.shape[0] * f.shape[1] for f in self.factors())

    def stored_bytes(self) -> int:
        """Bytes the map occupies in a model file: every stored tensor (parameters at their
        dtype and persistent buffers such as quantisation scales)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


class DenseMap(WeightMap):
    """``x -> W x`` with ``weights`` (out, in), initialised like PyTorch's LSTM/Linear."""

    type_name = "dense"

    def __init__(
        self, in_features: int, out_features: int, *, init_scale: float | None = None
    ) -> None:
        super().__init__(in_features, out_features)
        self.weights = nn.Parameter(torch.empty(out_features, in_features))
        bound = init_scale if init_scale is not None else 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weights, -bound, bound)

    def factors(self) -> list[Tensor]:
        return [self.weights.T]

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weights.T  # (..., in) -> (..., out)

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "in_features": self.in_features,
                "out_features": self.out_features}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DenseMap:
        return cls(int(spec["in_features"]), int(spec["out_features"]))


def build_map(spec: dict[str, Any]) -> WeightMap:
    """A map from its spec, its class found through :data:`MAP_CLASSES`."""
    cls = registered(MAP_CLASSES, spec.get("type"), f"unknown weight-map type {spec.get('type')!r}",
                     "; was the model made by a newer bsoc?")
    return cls.from_spec(spec)


def _check_shape(role: str, layer_map: WeightMap, in_features: int, out_features: int) -> None:
    if (layer_map.in_features, layer_map.out_features) != (in_features, out_features):
        raise ModelFileError(
            f"{role} maps {layer_map.in_features}->{layer_map.out_features}, "
            f"the layer needs {in_features}->{out_features}",
            remedy="check the layer sizes in the model config",
        )


class Lstm(nn.Module):
    """One LSTM layer, gates in PyTorch's order (i, f, g, o) and one bias vector::

        gates = input_map(x_t) + recurrent_map(h_{t-1}) + bias       (B, 4H)
        i, f, g, o = sigmoid(gates_i), sigmoid(gates_f), tanh(gates_g), sigmoid(gates_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    Learnables (Table 1 names): ``input_weights`` (4H, a) = ``input_map.weights``,
    ``recurrent_weights`` (4H, H) = ``recurrent_map.weights``, ``bias`` (4H). Other maps
    bring their own parameters (e.g. projectors).

    :attr:`map_reads` names what each map reads: ``input_map`` the layer's input x_t,
    ``recurrent_map`` its own output h_{t-1}. Compression projects each map onto the
    principal components of exactly that activation.

    Speed: :meth:`forward` runs PyTorch's fused LSTM kernel (a C++ time loop, about 5x
    faster than a Python loop for training on CPU) with the maps' equivalent dense
    matrices and ``bias`` (its second bias is a constant zero), which is the same function
    by linearity and differentiable into every factor. :meth:`step` spells the equations out
    and :meth:`scan` loops it; tests pin the fused path to it, so gate order and bias
    handling cannot drift.
    """

    map_reads: ClassVar[dict[str, str]] = {"input_map": "input", "recurrent_map": "output"}

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        input_map: WeightMap | None = None,
        recurrent_map: WeightMap | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        init = 1.0 / math.sqrt(hidden_size)  # PyTorch's LSTM initialisation
        self.input_map = input_map or DenseMap(input_size, 4 * hidden_size, init_scale=init)
        self.recurrent_map = recurrent_map or DenseMap(hidden_size, 4 * hidden_size,
                                                       init_scale=init)
        self.bias = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-init, init))
        self.register_buffer("_zero_bias", torch.zeros(4 * hidden_size), persistent=False)
        for role in self.map_reads:
            self._check_map(role, getattr(self, role))

    def _check_map(self, role: str, layer_map: WeightMap) -> None:
        if role not in self.map_reads:
            raise ValueError(f"an LSTM layer has {' and '.join(self.map_reads)}, not {role!r}")
        width = self.input_size if self.map_reads[role] == "input" else self.hidden_size
        _check_shape(role, layer_map, width, 4 * self.hidden_size)

    def chrono_initialise(self, max_steps: float) -> None:
        """Forget-gate biases ``b = log(T)`` with ``T`` log-uniform on ``[1, max_steps]``,
        input-gate biases ``-b`` (after Tallec and Ollivier 2018, "Can recurrent neural
        networks warp time?").

        A unit whose forget gate is ``sigmoid(b)`` remembers for about ``1 + e^b`` steps and,
        with its input gate at ``sigmoid(-b)``, sums its input over that time rather than
        saturating: before any training, a network whose units integrate over every time
        scale up to ``max_steps`` (a drive cycle's hours), where PyTorch's biases near zero
        make every unit forget within a few steps. The paper draws ``T`` uniformly, which
        leaves almost every unit slower than the SOC's fast voltage cues; log-uniform keeps
        as many units per decade of memory. Draws from torch's global generator.
        """
        if max_steps <= 2:
            raise ValueError(f"chrono initialisation needs max_steps > 2, not {max_steps}")
        hidden = self.hidden_size
        with torch.no_grad():
            forget = torch.empty(hidden).uniform_(0.0, math.log(max_steps))
            self.bias[hidden : 2 * hidden] = forget
            self.bias[:hidden] = -forget

    def set_map(self, role: str, layer_map: WeightMap) -> None:
        """Swap ``input_map`` or ``recurrent_map`` (e.g. for its projected equivalent)."""
        self._check_map(role, layer_map)
        setattr(self, role, layer_map)

    @property
    def input_weights(self) -> Tensor:
        return self.input_map.dense_weight()

    @property
    def recurrent_weights(self) -> Tensor:
        return self.recurrent_map.dense_weight()

    def zero_state(self, batch: int, like: Tensor) -> LstmState:
        zeros = like.new_zeros(batch, self.hidden_size)
        return zeros, zeros.clone()

    def step(self, x_t: Tensor, state: LstmState) -> tuple[Tensor, LstmState]:
        """One time step: ``x_t`` (B, a), state (h, c) each (B, H) -> h_t and (h_t, c_t)."""
        h, c = state
        gates = self.input_map(x_t) + self.recurrent_map(h) + self.bias  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def scan(self, x: Tensor, state: LstmState | None = None) -> tuple[Tensor, LstmState]:
        """Reference sequence pass by :meth:`step` in a Python loop (slow; for checking)."""
        state = state or self.zero_state(x.shape[0], x)
        outputs = []
        for t in range(x.shape[1]):
            h, state = self.step(x[:, t], state)
            outputs.append(h)
        return torch.stack(outputs, dim=1), state  # (B, T, H)

    def forward(self, x: Tensor, state: LstmState | None = None) -> tuple[Tensor, LstmState]:
        """Sequence ``x`` (B, T, a) from ``state`` (zeros if None) -> h (B, T, H), final state."""
        h0, c0 = state or self.zero_state(x.shape[0], x)
        params = [self.input_weights, self.recurrent_weights, self.bias, self._zero_bias]
        y, h_n, c_n = torch.lstm(
            x, (h0.unsqueeze(0), c0.unsqueeze(0)), params,
            # has_biases, num_layers, dropout, train, bidirectional, batch_first
            True, 1, 0.0, self.training, False, True,
        )
        return y, (h_n.squeeze(0), c_n.squeeze(0))

    def macs(self) -> int:
        """Per step: both maps plus the element-wise cell update (3 products per unit)."""
        return self.input_map.macs() + self.recurrent_map.macs() + 3 * self.hidden_size


class FullyConnected(nn.Module):
    """``y = weight_map(x) + bias``; learnables ``weights`` (out, in) and ``bias`` (out)."""

    map_reads: ClassVar[dict[str, str]] = {"weight_map": "input"}  # as :attr:`Lstm.map_reads`

    def __init__(
        self, in_features: int, out_features: int, *, weight_map: WeightMap | None = None
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's initialisation
        self.weight_map = weight_map or DenseMap(in_features, out_features, init_scale=bound)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.in_features, self.out_features = in_features, out_features

    def set_map(self, role: str, layer_map: WeightMap) -> None:
        """Swap ``weight_map`` (same interface as :meth:`Lstm.set_map`)."""
        if role not in self.map_reads:
            raise ValueError(f"a fully connected layer has weight_map, not {role!r}")
        _check_shape(role, layer_map, self.in_features, self.out_features)
        self.weight_map = layer_map

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return self.weight_map(x) + self.bias

    def macs(self) -> int:
        return self.weight_map.macs()
