"""Unpack a compressed network into plain layers (for targets that want ordinary LSTMs).

Every non-dense map is replaced by a :class:`~bsoc.nn.layers.DenseMap` holding the product of
its factors (``W_in Q^T``), biases untouched: the same function, computed the plain way, at
the plain size. Useful when a deployment runtime only has a stock LSTM kernel; the
compressed model keeps the small size and the fast low-rank streaming step.
"""

from __future__ import annotations

import copy

import torch

from bsoc.nn.layers import DenseMap
from bsoc.nn.network import SocNetwork


def unpack_network(network: SocNetwork) -> SocNetwork:
    """A copy of ``network`` with every weight map dense (outputs equal to float rounding)."""
    plain = copy.deepcopy(network)
    for address, layer_map in plain.weight_maps().items():
        if isinstance(layer_map, DenseMap):
            continue
        dense = DenseMap(layer_map.in_features, layer_map.out_features)
        with torch.no_grad():
            product = layer_map.dense_weight().double()  # (out, in), multiplied in float64
            dense.weights.copy_(product.float())
        plain.set_map(address, dense)
    return plain
