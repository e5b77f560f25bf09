"""Post-training int8 quantisation of the weights (weight-only: activations stay float32).

A BMS microcontroller with an FPU (Cortex-M4F) multiplies floats as fast as integers, but
its flash is small: storing the weights as int8 divides their bytes by four, and weight-only
keeps the arithmetic float, so no calibration data and no re-scaling of activations are
needed. The scheme, the same for every weight map (dense, projected, SVD):

* every factor ``F`` (in, out) of the map (``map(x) = x @ F_1 @ F_2``, see
  :class:`~bsoc.nn.layers.WeightMap`) is quantised on its own, so a projected layer's
  projector is int8 too;
* symmetric, one scale per output channel (column of ``F``, i.e. per output neuron):
  ``s_j = max_i |F_ij| / 127`` in float32 (1 for an all-zero column), and
  ``q_ij = clamp(round_half_even(F_ij / s_j), -127, 127)``;
* the dequantised weight is the float32 product ``q_ij * s_j``: that is the model
  (:meth:`Int8Map.factors`), in the batched, streaming and exported paths alike;
* biases, normalisation statistics and the LSTM state stay float32.

A quantised network is the same :class:`~bsoc.nn.network.SocNetwork` with every map an
:class:`Int8Map`, so it saves, loads and runs wherever a float network does; its kind is
the source's kind with ``-int8`` appended.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from bsoc.errors import ModelFileError
from bsoc.nn.layers import WeightMap
from bsoc.nn.network import SocNetwork

INT8_SUFFIX = "-int8"
_QMAX = 127
SCHEME = ("int8 weights: symmetric, one float32 scale per output channel of every weight-map "
          "factor (projectors included); biases, activations and state float32")


def quantize_factor(factor: Tensor) -> tuple[Tensor, Tensor]:
    """int8 values (in, out) and float32 scales (out,) of a factor ``F`` (in, out)."""
    factor = factor.detach().to(torch.float32)
    peak = factor.abs().amax(dim=0)
    scales = torch.where(peak > 0, peak / _QMAX, torch.ones_like(peak))
    values = torch.clamp(torch.round(factor / scales), -_QMAX, _QMAX).to(torch.int8)
    return values, scales


class Int8Map(WeightMap):
    """A weight map whose factors are stored as int8 ``values_k`` with ``scales_k``.

    ``values_k`` are parameters (not trained: ``requires_grad`` is off), so the model's
    learnables are counted as for its float source; ``scales_k`` are buffers. The spec
    keeps the source map's spec, so a report can say what was quantised.
    """

    type_name = "int8"

    def __init__(self, source: dict[str, Any], shapes: list[tuple[int, int]]) -> None:
        super().__init__(int(source["in_features"]), int(source["out_features"]))
        self.source = dict(source)
        self.shapes = [(int(rows), int(cols)) for rows, cols in shapes]
        for k, (rows, cols) in enumerate(self.shapes):
            self.register_parameter(f"values_{k}", nn.Parameter(
                torch.zeros(rows, cols, dtype=torch.int8), requires_grad=False))
            self.register_buffer(f"scales_{k}", torch.ones(cols))

    @classmethod
    def quantize(cls, layer_map: WeightMap) -> Int8Map:
        """The int8 version of a float map (same function up to the quantisation error)."""
        factors = layer_map.factors()
        quantized = cls(layer_map.spec(), [tuple(f.shape) for f in factors])
        with torch.no_grad():
            for k, factor in enumerate(factors):
                values, scales = quantize_factor(factor)
                getattr(quantized, f"values_{k}").copy_(values)
                getattr(quantized, f"scales_{k}").copy_(scales)
        return quantized

    def int8_factors(self) -> list[tuple[Tensor, Tensor]]:
        """``(values (in, out) int8, scales (out,) float32)`` per factor, for exporters."""
        return [(getattr(self, f"values_{k}"), getattr(self, f"scales_{k}"))
                for k in range(len(self.shapes))]

    def factors(self) -> list[Tensor]:
        return [values.to(torch.float32) * scales for values, scales in self.int8_factors()]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "in_features": self.in_features,
                "out_features": self.out_features,
                "factor_shapes": [list(shape) for shape in self.shapes], "source": self.source}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8Map:
        return cls(spec["source"], [tuple(shape) for shape in spec["factor_shapes"]])


def quantize_network(network: SocNetwork) -> SocNetwork:
    """A copy of ``network`` with every weight map replaced by its :class:`Int8Map`."""
    if any(isinstance(m, Int8Map) for m in network.weight_maps().values()):
        raise ModelFileError("the network is already quantised",
                             remedy="quantise its float source model instead")
    quantized = copy.deepcopy(network)
    for address, layer_map in network.weight_maps().items():
        quantized.set_map(address, Int8Map.quantize(layer_map))
    return quantized.eval()


def quantization_record(float_network: SocNetwork, quantized: SocNetwork) -> dict[str, Any]:
    """What a quantised model's config.json says about its bytes and its weight errors."""
    maps: dict[str, Any] = {}
    int8_bytes = scale_bytes = 0
    float_maps = float_network.weight_maps()
    for address, layer_map in quantized.weight_maps().items():
        with torch.no_grad():
            errors = [float((q - f).abs().max()) for q, f in
                      zip(layer_map.factors(), float_maps[address].factors(), strict=True)]
        maps[address] = {"source": layer_map.source, "factor_shapes": layer_map.spec()[
            "factor_shapes"], "max_abs_weight_error": max(errors)}
        for values, scales in layer_map.int8_factors():
            int8_bytes += values.numel()
            scale_bytes += 4 * scales.numel()
    return {
        "scheme": SCHEME,
        "weight_bytes_float32": float_network.weight_bytes(),
        "weight_bytes": quantized.weight_bytes(),
        "int8_bytes": int8_bytes,
        "scale_bytes": scale_bytes,
        "float32_bias_bytes": quantized.weight_bytes() - int8_bytes - scale_bytes,
        "maps": maps,
    }
