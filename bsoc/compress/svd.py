"""The data-free baseline: truncated SVD of each weight matrix (W and R separately).

``W ~ U_k S_k V_k^T = W V_k V_k^T``: truncated SVD is a projection of the map's input onto
the weight's top-k right-singular vectors. So the baseline is the projection machinery
(:mod:`bsoc.compress.goals`, :mod:`bsoc.compress.projection`) with a different basis, and at
the same ranks it has exactly the same learnables as the projected network. The two differ only in *which* subspace
they keep: SVD keeps the directions the weights amplify most, neuron PCA the directions
the data actually excites (the projection article's argument).

Ranks: the same ranks as a projection result (equal learnables, map by map), or a goal;
for a learnables budget the "explained variance" is the kept fraction of squared
singular values, one level for all maps, found by the same search.
"""

from __future__ import annotations

import numpy as np

from bsoc.compress.goals import CompressionRecord, Goal, compress_with_basis, layer_maps
from bsoc.compress.maps import LowRankMap
from bsoc.nn.network import SocNetwork


class SvdBasis:
    """Right-singular vectors and squared-singular-value curves of every map of a network."""

    def __init__(self, network: SocNetwork) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        self._curves: dict[str, np.ndarray] = {}
        for layer in network.learnable_layers():
            module = network.get_submodule(layer)
            for role, reads in layer_maps(network, layer).items():
                weight = getattr(module, role).dense_weight().detach().double().numpy()  # (out, in)
                _, singular, vt = np.linalg.svd(weight, full_matrices=True)
                energy = np.zeros(weight.shape[1])
                energy[: len(singular)] = singular**2
                cumulative = np.cumsum(energy)
                site = f"{layer}.{reads}"
                self._vectors[site] = vt.T  # (in, in), columns by falling singular value
                self._curves[site] = (cumulative / cumulative[-1] if cumulative[-1] > 0
                                      else np.ones_like(cumulative))

    def curve(self, site: str) -> np.ndarray:
        return self._curves[site]

    def projector(self, site: str, rank: int) -> np.ndarray:
        return self._vectors[site][:, :rank]

    def offset(self, site: str) -> np.ndarray:
        return np.zeros(self._vectors[site].shape[0])


def compress_network_using_svd(
    network: SocNetwork, goal: Goal, *, layers: list[str] | None = None,
    only_if_smaller: bool = True,
) -> tuple[SocNetwork, CompressionRecord]:
    """Truncated SVD of the maps of ``layers`` at the ranks ``goal`` gives (a copy; no data used).

    Pass ``Goal(ranks=projection_record.ranks)`` for the equal-learnables comparison.
    """
    return compress_with_basis(network, SvdBasis(network), goal, layers, method="svd",
                               curve_key="singular_value_energy", map_class=LowRankMap,
                               only_if_smaller=only_if_smaller)
