"""Projection of an LSTM network onto its neurons' principal components: the article's maths.

For an LSTM layer with input x (a neurons) and hidden state h (H neurons), over all time
steps of the training split:

1. **moments**: per activation, the float64 count, sum and sum of outer products, streamed
   (memory O(neurons^2), never O(samples); :class:`Moments`);
2. **eigh**: ``C = E[x x^T] - mu mu^T`` decomposed, eigenvectors by falling eigenvalue;
3. **projectors**: ``Q`` = the top-b eigenvectors (a x b), b from an explained-variance goal
   (:mod:`bsoc.compress.goals` chooses it);
4. **absorbed weights**: ``W_in = W Q_in`` (4H x b_in), ``W_rec = R Q_out`` (4H x b_out), so
   ``gates = W_in (Q_in^T x_t) + W_rec (Q_out^T h_{t-1}) + b'`` and the layer keeps its width;
5. **the mean folded into the bias**: projecting around the mean, ``x ~ mu + Q Q^T (x - mu)``,
   leaves the constant ``b' = b + W (I - Q_in Q_in^T) mu_in + R (I - Q_out Q_out^T) mu_out``.

The fully connected layer likewise: ``y = (W Q)(Q^T x) + b + W (I - Q Q^T) mu``. With every
eigenvector kept, ``Q Q^T = I`` and the projected network is the original one.

``mean_handling="second-moment"`` decomposes ``E[x x^T]`` instead, so the mean direction is
one of the kept eigen-neurons and nothing is folded (``benchmarks/mean_handling.py``
compares the two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import nn

from bsoc.compress.activations import site_aliases, site_widths, stream_activations
from bsoc.compress.maps import ProjectedMap
from bsoc.data.schema import Cycle
from bsoc.data.windows import SequenceSet
from bsoc.errors import ConfigError
from bsoc.nn.network import SocNetwork

MeanHandling = Literal["fold-into-bias", "second-moment"]
MEAN_HANDLINGS: tuple[str, ...] = ("fold-into-bias", "second-moment")


class Moments:
    """Streamed float64 count, sum and sum of outer products of row vectors."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.total = np.zeros(width)
        self.outer = np.zeros((width, width))

    def add(self, rows: np.ndarray) -> None:  # (N, width)
        rows = rows.astype(np.float64, copy=False)
        self.count += len(rows)
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows


class NeuronPCA:
    """Eigen-neurons of each projectable layer (scikit-learn style: ``fit`` returns self).

    Learned state, each a dict keyed by site (:func:`~bsoc.compress.activations.site_aliases`):
    ``mean_`` (a,), ``covariance_`` (a, a) (the matrix decomposed: centred covariance or
    second moment), ``eigenvalues_`` (a,) descending, ``components_`` (a, a) with eigenvector
    k in column k, ``explained_variance_ratio_`` (a,); and ``n_samples_``, the time steps seen.
    """

    def __init__(self, mean_handling: MeanHandling = "fold-into-bias", *, batch_size: int = 8,
                 chunk_steps: int = 2048) -> None:
        self.mean_handling = mean_handling
        self.batch_size = batch_size
        self.chunk_steps = chunk_steps

    def fit(self, network: SocNetwork, data: list[Cycle] | SequenceSet,
            on_progress: Callable[[int, int], None] | None = None) -> NeuronPCA:
        """Moments of every activation of ``network`` (eval mode) over ``data``, decomposed."""
        self._check_params()
        sequences = data if isinstance(data, SequenceSet) else SequenceSet.from_cycles(data)
        if len(sequences) == 0:
            raise ConfigError("neuron PCA needs at least one sequence",
                              remedy="give it the training split (or a non-empty subset)")
        moments = {source: Moments(width) for source, width in site_widths(network).items()}
        was_training = network.training
        network.eval()
        try:
            for chunk in stream_activations(network, sequences, batch_size=self.batch_size,
                                            chunk_steps=self.chunk_steps,
                                            on_progress=on_progress):
                for source, rows in chunk.items():
                    moments[source].add(rows)
        finally:
            network.train(was_training)
        self._decompose({site: moments[source] for site, source in site_aliases(network).items()})
        return self

    def fit_arrays(self, activations: dict[str, np.ndarray]) -> NeuronPCA:
        """Fit from activations already in memory, ``{site: (N, a)}`` (synthetic studies, tests)."""
        self._check_params()
        moments = {}
        for site, rows in activations.items():
            rows = np.asarray(rows)
            if rows.ndim != 2 or len(rows) < 2:
                raise ConfigError(
                    f"activations of {site!r} must be (N >= 2, neurons), got {rows.shape}",
                    remedy="pass one row per observation")
            moments[site] = Moments(rows.shape[1])
            moments[site].add(rows)
        self._decompose(moments)
        return self

    def _check_params(self) -> None:
        if self.mean_handling not in MEAN_HANDLINGS:
            raise ConfigError(f"unknown mean handling {self.mean_handling!r}",
                              remedy=f"use one of {MEAN_HANDLINGS}")
        if self.batch_size < 1 or self.chunk_steps < 1:
            raise ConfigError("batch_size and chunk_steps must be positive",
                              remedy="e.g. 8 and 2048")

    def _decompose(self, moments: dict[str, Moments]) -> None:
        self.mean_, self.covariance_, self.eigenvalues_ = {}, {}, {}
        self.components_, self.explained_variance_ratio_ = {}, {}
        self.n_samples_ = max(m.count for m in moments.values())
        for site, m in moments.items():
            mean = m.total / m.count
            matrix = m.outer / m.count
            if self.mean_handling == "fold-into-bias":
                matrix = matrix - np.outer(mean, mean)
            matrix = 0.5 * (matrix + matrix.T)
            values, vectors = np.linalg.eigh(matrix)
            order = np.argsort(-values, kind="stable")
            values = np.clip(values[order], 0.0, None)
            vectors = vectors[:, order]
            # Sign convention (each eigenvector's largest component positive): deterministic output.
            signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(len(values))])
            vectors = vectors * np.where(signs == 0, 1.0, signs)
            total = values.sum()
            ratio = values / total if total > 0 else np.eye(len(values))[0]
            self.mean_[site], self.covariance_[site] = mean, matrix
            self.eigenvalues_[site], self.components_[site] = values, vectors
            self.explained_variance_ratio_[site] = ratio

    @property
    def sites(self) -> list[str]:
        return list(self._fitted().explained_variance_ratio_)

    def _fitted(self) -> NeuronPCA:
        if not hasattr(self, "explained_variance_ratio_"):
            raise ConfigError("this NeuronPCA is not fitted yet", remedy="call fit() first")
        return self

    def _site(self, site: str) -> str:
        if site not in self._fitted().explained_variance_ratio_:
            raise ConfigError(f"neuron PCA has no site {site!r}", remedy=f"sites are {self.sites}")
        return site

    def curve(self, site: str) -> np.ndarray:
        """Cumulative explained variance ratio by rank (index r-1 -> rank r); ends at exactly 1."""
        cumulative = np.cumsum(self.explained_variance_ratio_[self._site(site)])
        return cumulative / cumulative[-1]

    def projector(self, site: str, rank: int) -> np.ndarray:
        """The top-``rank`` eigen-neurons Q (a, rank), orthonormal columns."""
        components = self.components_[self._site(site)]
        if not 1 <= rank <= components.shape[0]:
            raise ConfigError(f"rank {rank} for {site} is out of range",
                              remedy=f"use 1..{components.shape[0]} (the number of neurons)")
        return components[:, :rank]

    def offset(self, site: str) -> np.ndarray:
        """Where the projection is centred: the mean (fold-into-bias) or zero (second moment)."""
        mean = self.mean_[self._site(site)]
        return mean if self.mean_handling == "fold-into-bias" else np.zeros_like(mean)


def absorb(weight: np.ndarray, projector: np.ndarray,
           map_class: type[ProjectedMap] = ProjectedMap) -> ProjectedMap:
    """The map ``x -> (W Q)(Q^T x)`` from ``weight`` W (out, in) and a projector Q (in, rank)."""
    return map_class.from_arrays(projector, weight @ projector)


def folded_bias(weight: np.ndarray, projector: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``W (I - Q Q^T) mu``: what projecting around ``mu`` removes from ``W x``, for the bias."""
    return weight @ (offset - projector @ (projector.T @ offset))


def project_layer(layer: nn.Module, projections: dict[str, tuple[np.ndarray, np.ndarray]],
                  map_class: type[ProjectedMap] = ProjectedMap) -> None:
    """Project every map of ``layer`` in place: ``W_in = W Q_in``, ``W_rec = R Q_out``, ``b'``.

    ``projections`` holds ``(Q, mu)`` per activation the layer's maps read (its
    ``map_reads``: ``"input"`` for x, ``"output"`` for h), in float64.
    """
    bias = layer.bias.detach().double().numpy().copy()
    for role, reads in layer.map_reads.items():
        weight = getattr(layer, role).dense_weight().detach().double().numpy()  # W or R (4H, in)
        projector, offset = projections[reads]
        bias += folded_bias(weight, projector, offset)
        layer.set_map(role, absorb(weight, projector, map_class))
    with torch.no_grad():
        layer.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
