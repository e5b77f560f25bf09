"""Neuron PCA: the covariance of every projectable layer's neurons, eigen-decomposed.

For each layer the network is run over representative data (the training split's whole
cycles, from a zero state, as it runs live) and the activations are reduced on the fly
to float64 sums (count, sum, sum of outer products): memory is O(neurons^2), never
O(samples). Sites, per layer:

* ``lstm_k.input``  the inputs x_t of LSTM layer k (normalised features for k = 1);
* ``lstm_k.output`` its hidden states h_t (what its recurrent weights see as h_{t-1});
* ``fc.input``      the inputs of the fully connected layer.

In evaluation mode dropout is the identity, so ``lstm_{k+1}.input`` *is* ``lstm_k.output``
and ``fc.input`` is the last LSTM's output: each distinct activation is accumulated once
and shared by its aliases (MATLAB's Table 1 has the same rank, 11, for both).

The mean matters: LSTM hidden states have a large non-zero mean. Two ways keep it
(``mean_handling``; ``benchmarks/mean_handling.py`` compares them):

* ``"fold-into-bias"`` (default): eigen-decompose the centred covariance and project
  around the mean, ``x ~ mu + Q Q^T (x - mu)``; the constant ``W (I - Q Q^T) mu`` goes
  into the layer's bias (:meth:`NeuronPCA.offset` returns ``mu``);
* ``"second-moment"``: eigen-decompose ``E[x x^T]`` so the mean direction is one of the
  kept eigen-neurons; nothing is added to the bias (:meth:`NeuronPCA.offset` is zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from bsoc.data.schema import Cycle
from bsoc.data.windows import SequenceSet
from bsoc.errors import ConfigError
from bsoc.nn.network import SocNetwork

MeanHandling = Literal["fold-into-bias", "second-moment"]
MEAN_HANDLINGS: tuple[str, ...] = ("fold-into-bias", "second-moment")


def site_aliases(network: SocNetwork) -> dict[str, str]:
    """Every site -> the distinct activation it reads (``lstm_2.input`` -> ``lstm_1.output``)."""
    names = network.lstm_names
    aliases = {f"{names[0]}.input": f"{names[0]}.input"}
    for k, name in enumerate(names):
        aliases[f"{name}.output"] = f"{name}.output"
        if k > 0:
            aliases[f"{name}.input"] = f"{names[k - 1]}.output"
    aliases["fc.input"] = f"{names[-1]}.output"
    return aliases


class _Moments:
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

    Learned state, each a dict keyed by site name (:func:`site_aliases`):
    ``mean_`` (a,), ``covariance_`` (a, a) (the matrix decomposed: centred covariance or
    second moment, by ``mean_handling``), ``eigenvalues_`` (a,) descending,
    ``components_`` (a, a) with eigenvector k in column k, ``explained_variance_ratio_`` (a,);
    and ``n_samples_``, the time steps seen.
    """

    def __init__(self, mean_handling: MeanHandling = "fold-into-bias", *, batch_size: int = 8,
                 chunk_steps: int = 2048) -> None:
        self.mean_handling = mean_handling
        self.batch_size = batch_size
        self.chunk_steps = chunk_steps

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, network: SocNetwork, data: list[Cycle] | SequenceSet,
            on_progress: Callable[[int, int], None] | None = None) -> NeuronPCA:
        """Run ``network`` (eval mode) over every sequence of ``data`` and decompose.

        Sequences are batched by length and run in time chunks of ``chunk_steps`` with the
        LSTM states carried over, so memory stays bounded on long cycles. Deterministic:
        fixed order, float64 sums. ``on_progress(done, total)`` counts time steps.
        """
        self._check_params()
        sequences = data if isinstance(data, SequenceSet) else SequenceSet.from_cycles(data)
        if len(sequences) == 0:
            raise ConfigError("neuron PCA needs at least one sequence",
                              remedy="give it the training split (or a non-empty subset)")
        aliases = site_aliases(network)
        widths = {}
        for name in network.lstm_names:
            lstm = network.get_submodule(name)
            widths[f"{name}.input"], widths[f"{name}.output"] = lstm.input_size, lstm.hidden_size
        moments = {source: _Moments(widths[source]) for source in sorted(set(aliases.values()))}
        was_training = network.training
        network.eval()
        try:
            self._stream(network, sequences, moments, on_progress)
        finally:
            network.train(was_training)
        self._decompose({site: moments[source] for site, source in aliases.items()})
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
            moments[site] = _Moments(rows.shape[1])
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

    def _stream(self, network: SocNetwork, sequences: SequenceSet,
                moments: dict[str, _Moments],
                on_progress: Callable[[int, int], None] | None) -> None:
        captured: dict[str, torch.Tensor] = {}

        def keep_input(name: str) -> Callable:
            return lambda module, args, output: captured.__setitem__(f"{name}.input", args[0])

        def keep_output(name: str) -> Callable:
            return lambda module, args, output: captured.__setitem__(f"{name}.output", output[0])

        first = network.lstm_names[0]
        hooks = [network.get_submodule(first).register_forward_hook(keep_input(first))]
        hooks += [network.get_submodule(n).register_forward_hook(keep_output(n))
                  for n in network.lstm_names]
        order = np.argsort(-sequences.lengths, kind="stable")  # similar lengths share a batch
        total, done = int(sequences.lengths.sum()), 0
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    lengths = sequences.lengths[batch]
                    x = np.zeros((len(batch), int(lengths.max()), sequences.features[0].shape[1]),
                                 np.float32)
                    for row, index in enumerate(batch):
                        x[row, : lengths[row]] = sequences.features[index]
                    states = None
                    for t0 in range(0, x.shape[1], self.chunk_steps):
                        chunk = torch.from_numpy(x[:, t0 : t0 + self.chunk_steps])  # (B, T, 3)
                        _, states = network(chunk, states)
                        steps = t0 + np.arange(chunk.shape[1])
                        valid = steps[None, :] < lengths[:, None]  # (B, T): not padding
                        for source, accumulator in moments.items():
                            accumulator.add(captured[source].numpy()[valid])
                        done += int(valid.sum())
                        if on_progress is not None:
                            on_progress(done, total)
        finally:
            for hook in hooks:
                hook.remove()

    def _decompose(self, moments: dict[str, _Moments]) -> None:
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

    # -- using the fit -----------------------------------------------------------------------------
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
