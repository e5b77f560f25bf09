"""Low-rank weight maps: the projected map (neuron PCA) and the truncated-SVD map.

A projected map computes ``x -> W_in (Q^T x)`` with

* ``projector`` Q (in, rank): orthonormal eigen-neurons of the map's *input* neurons;
* ``weights`` W_in (out, rank) = W Q, the original weights with the projection absorbed
  (:func:`bsoc.compress.projection.absorb`).

On row vectors that is the factor chain ``x @ Q @ W_in^T`` (:class:`~bsoc.nn.layers.WeightMap`),
so the streaming kernel applies the two thin factors in sequence and never re-densifies.
In an LSTM layer, ``input_map.projector`` is MATLAB's *InputProjector* (a x b_in) and
``recurrent_map.projector`` its *OutputProjector* (H x b_out), which projects the layer's
own hidden state before the recurrent weights.

Truncated SVD is the same map with a different basis: ``U_k S_k V_k^T = W V_k V_k^T``, a
projection onto W's top right-singular vectors instead of the data's eigen-neurons, so
:class:`LowRankMap` only changes the type name a saved model records.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bsoc.nn.layers import WeightMap


class ProjectedMap(WeightMap):
    """``x -> weights @ (projector^T x)``: ``projector`` (in, rank), ``weights`` (out, rank)."""

    type_name = "projected"

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__(in_features, out_features)
        self.rank = rank
        self.projector = nn.Parameter(torch.zeros(in_features, rank))
        self.weights = nn.Parameter(torch.zeros(out_features, rank))

    @classmethod
    def from_arrays(cls, projector: np.ndarray, weights: np.ndarray) -> ProjectedMap:
        """The map with ``projector`` (in, rank) and ``weights`` (out, rank), stored as float32."""
        layer_map = cls(projector.shape[0], weights.shape[0], projector.shape[1])
        with torch.no_grad():
            layer_map.projector.copy_(torch.from_numpy(projector.astype(np.float32)))
            layer_map.weights.copy_(torch.from_numpy(weights.astype(np.float32)))
        return layer_map

    def factors(self) -> list[Tensor]:
        return [self.projector, self.weights.T]  # (in, rank), (rank, out)

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "in_features": self.in_features,
                "out_features": self.out_features, "rank": self.rank}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ProjectedMap:
        return cls(int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]))


class LowRankMap(ProjectedMap):
    """Truncated SVD: ``projector`` = V_k (top right-singular vectors), ``weights`` = U_k S_k."""

    type_name = "low-rank"
