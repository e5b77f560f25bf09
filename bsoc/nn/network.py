"""The SOC network of the article's Table 1, readable top to bottom.

    features (B, T, 3)  voltage_v, current_a, temperature_c in physical units
    -> normalise with the training split's mean/std (buffers stored with the weights)
    -> lstm_1 (256) -> dropout_1 (0.2) -> lstm_2 (128) -> dropout_2 (0.2)
    -> fc (1) -> sigmoid -> SOC (B, T) as a fraction

Layer names (``lstm_1``, ``lstm_2``, ``fc``) are the addresses compression uses; each
layer's linear parts are swappable weight maps (:mod:`bsoc.nn.layers`). The architecture
is a JSON-able description (sizes + every map's spec), so a model folder rebuilds any
variant, plain or compressed, without code knowing which one it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bsoc.errors import ModelFileError
from bsoc.nn.layers import FullyConnected, Lstm, LstmState, WeightMap, build_map


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the network; the defaults are Table 1 (463,489 learnables)."""

    n_features: int = 3
    hidden_sizes: tuple[int, ...] = (256, 128)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if not self.hidden_sizes or min(self.hidden_sizes) < 1 or not 0 <= self.dropout < 1:
            raise ModelFileError(
                f"invalid network config {self}",
                remedy="use at least one positive hidden size and 0 <= dropout < 1",
            )


class SocNetwork(nn.Module):
    """Sequence-to-sequence SOC regressor: one SOC per time step."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NetworkConfig()
        self.register_buffer("input_mean", torch.zeros(cfg.n_features))
        self.register_buffer("input_std", torch.ones(cfg.n_features))
        width = cfg.n_features
        for k, hidden in enumerate(cfg.hidden_sizes, start=1):
            self.add_module(f"lstm_{k}", Lstm(width, hidden))
            self.add_module(f"dropout_{k}", nn.Dropout(cfg.dropout))
            width = hidden
        self.fc = FullyConnected(width, 1)

    # -- structure ---------------------------------------------------------------------------
    @property
    def lstm_names(self) -> list[str]:
        return [f"lstm_{k}" for k in range(1, len(self.config.hidden_sizes) + 1)]

    def learnable_layers(self) -> dict[str, nn.Module]:
        """Layers with weights, by name, in data-flow order: lstm_1, lstm_2, ..., fc."""
        return {name: self.get_submodule(name) for name in [*self.lstm_names, "fc"]}

    def weight_maps(self) -> dict[str, WeightMap]:
        """Every swappable map by address, e.g. ``"lstm_1.input_map"``, ``"fc.weight_map"``."""
        return {
            name: module
            for name, module in self.named_modules()
            if isinstance(module, WeightMap)
        }

    def set_map(self, address: str, layer_map: WeightMap) -> None:
        """Replace the map at ``address`` (``"<layer>.<role>"``) after checking its shape."""
        layer_name, _, role = address.rpartition(".")
        layer = self.learnable_layers().get(layer_name)
        if layer is None:
            raise ModelFileError(f"no layer {layer_name!r} in the network",
                                 remedy=f"layers are {list(self.learnable_layers())}")
        layer.set_map(role, layer_map)

    def architecture(self) -> dict[str, Any]:
        """JSON description from which :meth:`from_architecture` rebuilds this network."""
        config = asdict(self.config)
        config["hidden_sizes"] = list(self.config.hidden_sizes)
        maps = {address: m.spec() for address, m in self.weight_maps().items()}
        return {"network": config, "maps": maps}

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> SocNetwork:
        """An untrained network of exactly the described shapes (load weights afterwards)."""
        try:
            network = cls(NetworkConfig(**architecture["network"]))
            for address, spec in architecture.get("maps", {}).items():
                if spec != network.weight_maps()[address].spec():
                    network.set_map(address, build_map(spec))
        except (KeyError, TypeError) as error:
            raise ModelFileError(
                f"the model's architecture description is invalid ({error!r})",
                remedy="re-create the model with 'bsoc train'",
            ) from None
        return network

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Store the training split's feature statistics (used by every forward pass)."""
        self.input_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(np.asarray(std), dtype=torch.float32))

    # -- size ----------------------------------------------------------------------------------
    def learnables(self) -> int:
        """Learnable parameters as Table 1 counts them (one bias per LSTM layer)."""
        return sum(p.numel() for p in self.parameters())

    def learnables_table(self) -> list[dict[str, Any]]:
        """One row per parameter: layer, parameter path, shape, count (for reports)."""
        rows = []
        for path, parameter in self.named_parameters():
            layer, _, name = path.partition(".")
            rows.append({"layer": layer, "parameter": name, "shape": list(parameter.shape),
                         "count": parameter.numel()})
        return rows

    def weight_bytes(self) -> int:
        """Bytes of the learnables as stored: the maps' tensors (float32, or int8 with their
        scales) and the biases; the normalisation statistics are not learnables."""
        maps = self.weight_maps().values()
        in_maps = {id(p) for m in maps for p in m.parameters()}
        biases = sum(p.numel() * p.element_size() for p in self.parameters()
                     if id(p) not in in_maps)
        return biases + sum(m.stored_bytes() for m in maps)

    def macs_per_sample(self) -> int:
        """Multiply-accumulates of one streaming step (normalisation folded, so not counted)."""
        return sum(layer.macs() for layer in self.learnable_layers().values())

    # -- computation ---------------------------------------------------------------------------
    def forward(
        self, features: Tensor, states: list[LstmState] | None = None
    ) -> tuple[Tensor, list[LstmState]]:
        """``features`` (B, T, 3) raw -> SOC (B, T) and the final state of every LSTM layer."""
        x = (features - self.input_mean) / self.input_std  # (B, T, 3)
        final: list[LstmState] = []
        for k, name in enumerate(self.lstm_names):
            x, state = self.get_submodule(name)(x, None if states is None else states[k])
            x = self.get_submodule(f"dropout_{k + 1}")(x)  # (B, T, H_k)
            final.append(state)
        return torch.sigmoid(self.fc(x)).squeeze(-1), final  # (B, T)
