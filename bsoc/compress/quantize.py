"""Post-training int8 quantisation of the weights (weight-only: activations stay float32).

A BMS microcontroller with an FPU (Cortex-M4F) multiplies floats as fast as integers, but
its flash is small: storing the weights as int8 divides their bytes by four, and weight-only
keeps the arithmetic float, so no calibration data and no re-scaling of activations are
needed. The scheme, the same for every weight map (dense, projected, SVD):

* every factor ``F`` (in, out) of the map (``map(x) = x @ F_1 @ F_2``, see
  :class:`~bsoc.nn.layers.WeightMap`) is stored as int8, so a projected layer's projector
  is int8 too; symmetric: ``q = clamp(round_half_even(F / s), -127, 127)`` with
  ``s = max |F| / 127`` in float32 over the channel a scale serves (1 for an all-zero one);
* a single factor (a dense map) has one scale per output channel (column of ``F``, i.e.
  per output neuron);
* in a chain, the last factor has one scale per *input* channel (row), and those scales are
  folded into the output scales of the factor before it, which has one per output channel:
  ``x @ (Q_1 s_1) @ (s_2 Q_2) = x @ (Q_1 (s_1 s_2)) @ Q_2``. The last factor is then int8
  values alone (unit scales). Its rows are the rank, a few, and its columns the gate rows,
  up to a thousand: per column it would store a float32 scale for every 9 to 17 int8
  weights (12,288 of the Panasonic model's 62,409 bytes) and rescale every gate; per row,
  folded, it stores none and rescales only F_1's few outputs, at the same accuracy
  (Panasonic test RMSE from start / cold start / degraded sensors 1.43 / 1.51 / 1.45 %,
  per column 1.42 / 1.51 / 1.47 %);
* the dequantised weight is the float32 product ``q * s`` (``q`` itself for a factor
  without scales): that is the model (:meth:`Int8Map.factors`), in the batched, streaming
  and exported paths alike;
* biases, normalisation statistics and the LSTM state stay float32.

A quantised network is the same :class:`~bsoc.nn.network.SocNetwork` with every map an
:class:`Int8Map`, so it saves, loads and runs wherever a float network does; its kind is
the source's kind with ``-int8`` appended. A map saved with scales on every factor (as
bsoc quantised before folding) loads and computes as it was saved.
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
WEIGHT_SCHEME = ("int8 weights of every weight-map factor (projectors included), symmetric: "
                 "one float32 scale per output channel, except a chain's last factor, scaled "
                 "per input channel with its scales folded into the factor before it (so "
                 "stored without scales)")
SCHEME = f"{WEIGHT_SCHEME}; biases, activations and state float32"


def quantize_factor(factor: Tensor, *, per_input: bool = False) -> tuple[Tensor, Tensor]:
    """int8 values (in, out) and float32 scales of a factor ``F`` (in, out): one scale per
    output channel (out,), or with ``per_input`` per input channel (in,)."""
    factor = factor.detach().to(torch.float32)
    peak = factor.abs().amax(dim=1 if per_input else 0)
    scales = torch.where(peak > 0, peak / _QMAX, torch.ones_like(peak))
    divisor = scales[:, None] if per_input else scales
    values = torch.clamp(torch.round(factor / divisor), -_QMAX, _QMAX).to(torch.int8)
    return values, scales


def quantize_factors(factors: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
    """The stored form of a map's factor chain: ``(values, scales)`` per factor, scales
    ``None`` for a chain's last factor (its per-input scales folded into the factor before)."""
    if len(factors) == 1:
        return [quantize_factor(factors[0])]
    stored: list[tuple[Tensor, Tensor | None]] = [quantize_factor(f) for f in factors[:-1]]
    last, folded = quantize_factor(factors[-1], per_input=True)
    before, scales = stored[-1]
    stored[-1] = (before, scales * folded)
    return [*stored, (last, None)]


class Int8Map(WeightMap):
    """A weight map whose factors are stored as int8 ``values_k``, each with float32
    ``scales_k`` (out,) unless ``k`` is in ``unscaled`` (its values are the factor).

    ``values_k`` are parameters (not trained: ``requires_grad`` is off), so the model's
    learnables are counted as for its float source; ``scales_k`` are buffers. The spec
    keeps the source map's spec, so a report can say what was quantised, and which factors
    have no scales (none in a spec that does not say: every factor was scaled).
    """

    type_name = "int8"

    def __init__(self, source: dict[str, Any], shapes: list[tuple[int, int]],
                 unscaled: tuple[int, ...] = ()) -> None:
        super().__init__(int(source["in_features"]), int(source["out_features"]))
        self.source = dict(source)
        self.shapes = [(int(rows), int(cols)) for rows, cols in shapes]
        self.unscaled = tuple(sorted({int(k) for k in unscaled}))
        for k, (rows, cols) in enumerate(self.shapes):
            self.register_parameter(f"values_{k}", nn.Parameter(
                torch.zeros(rows, cols, dtype=torch.int8), requires_grad=False))
            if k not in self.unscaled:
                self.register_buffer(f"scales_{k}", torch.ones(cols))

    @classmethod
    def quantize(cls, layer_map: WeightMap) -> Int8Map:
        """The int8 version of a float map (same function up to the quantisation error)."""
        factors = layer_map.factors()
        stored = quantize_factors(factors)
        quantized = cls(layer_map.spec(), [tuple(f.shape) for f in factors],
                        unscaled=tuple(k for k, (_, scales) in enumerate(stored) if scales is None))
        with torch.no_grad():
            for k, (values, scales) in enumerate(stored):
                getattr(quantized, f"values_{k}").copy_(values)
                if scales is not None:
                    getattr(quantized, f"scales_{k}").copy_(scales)
        return quantized

    def int8_factors(self) -> list[tuple[Tensor, Tensor | None]]:
        """``(values (in, out) int8, scales (out,) float32 or None)`` per factor, for
        exporters."""
        return [(getattr(self, f"values_{k}"),
                 None if k in self.unscaled else getattr(self, f"scales_{k}"))
                for k in range(len(self.shapes))]

    def factors(self) -> list[Tensor]:
        return [values.to(torch.float32) if scales is None else values.to(torch.float32) * scales
                for values, scales in self.int8_factors()]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "in_features": self.in_features,
                "out_features": self.out_features,
                "factor_shapes": [list(shape) for shape in self.shapes],
                "unscaled_factors": list(self.unscaled), "source": self.source}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8Map:
        return cls(spec["source"], [tuple(shape) for shape in spec["factor_shapes"]],
                   unscaled=tuple(spec.get("unscaled_factors", ())))


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
        with torch.no_grad():  # of the map's product: folding moves scale between factors
            error = (layer_map.dense_weight() - float_maps[address].dense_weight()).abs().max()
        maps[address] = {"source": layer_map.source, "factor_shapes": layer_map.spec()[
            "factor_shapes"], "max_abs_weight_error": float(error)}
        for values, scales in layer_map.int8_factors():
            int8_bytes += values.numel()
            scale_bytes += 0 if scales is None else 4 * scales.numel()
    return {
        "scheme": SCHEME,
        "weight_bytes_float32": float_network.weight_bytes(),
        "weight_bytes": quantized.weight_bytes(),
        "int8_bytes": int8_bytes,
        "scale_bytes": scale_bytes,
        "float32_bias_bytes": quantized.weight_bytes() - int8_bytes - scale_bytes,
        "maps": maps,
    }
