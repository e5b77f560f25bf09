"""Compression goals: which ranks a goal asks for, what they cost, and the record of it.

Ranks come from a :class:`Goal`, as MATLAB's ``compressNetworkUsingProjection`` offers:

* explained variance: per site, the smallest rank whose cumulative ratio meets the level;
* learnables reduction: the single level (searched over every breakpoint of every curve,
  highest first) whose ranks bring the whole network to the requested size;
* explicit ranks per layer, e.g. ``lstm_1=(3, 11)`` (one rank per map, in the order of
  the layer's ``map_reads``: input, then output).

A searched goal (level or reduction) may round every rank up to a multiple
(``rank_multiple``): the exported C step stores weights in column quads, so a rank that is
a multiple of four costs no padding columns (measured: README, "Edge deployment").

The ranks' projectors come from a :class:`Basis`: neuron PCA (the product,
:mod:`bsoc.compress.projection`, which also applies them) or the weights' own SVD
(:mod:`bsoc.compress.svd`, the data-free baseline). A layer whose ranks would not reduce
its learnables is left as it is, and the record says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import nn

from bsoc.compress.maps import ProjectedMap
from bsoc.compress.projection import NeuronPCA, project_layer
from bsoc.errors import ConfigError
from bsoc.nn.network import SocNetwork


class Basis(Protocol):
    """Where projectors come from: a spectrum per site, its top vectors, the centring point."""

    def curve(self, site: str) -> np.ndarray:
        """Cumulative kept fraction by rank (index r-1 -> rank r), ending at 1."""

    def projector(self, site: str, rank: int) -> np.ndarray:
        """Orthonormal columns Q (in, rank)."""

    def offset(self, site: str) -> np.ndarray:
        """Point the projection is centred on (zero for an uncentred basis)."""


@dataclass(frozen=True)
class Goal:
    """Exactly one of: explained-variance level, learnables-reduction fraction, explicit ranks.

    ``ranks`` maps a layer to its ranks: ``{"lstm_1": (b_in, b_out), "fc": (b_in,)}``.
    """

    explained_variance: float | None = None
    learnables_reduction: float | None = None
    ranks: dict[str, tuple[int, ...]] | None = None
    rank_multiple: int = 1  # searched goals: every rank rounded up to a multiple of this

    def __post_init__(self) -> None:
        goals = (self.explained_variance, self.learnables_reduction, self.ranks)
        given = [v is not None for v in goals]
        if sum(given) != 1:
            raise ConfigError("give exactly one compression goal",
                              remedy="--explained-variance, --learnables-reduction or --ranks")
        if self.explained_variance is not None and not 0 < self.explained_variance <= 1:
            raise ConfigError(f"explained variance {self.explained_variance} must be in (0, 1]",
                              remedy="e.g. --explained-variance 0.99")
        if self.learnables_reduction is not None and not 0 < self.learnables_reduction < 1:
            raise ConfigError(f"learnables reduction {self.learnables_reduction} must be in (0, 1)",
                              remedy="e.g. --learnables-reduction 0.9 for 90 % fewer learnables")
        if self.rank_multiple < 1:
            raise ConfigError(f"rank multiple {self.rank_multiple} must be at least 1",
                              remedy="e.g. --rank-multiple 4")
        if self.ranks is not None and self.rank_multiple != 1:
            raise ConfigError("a rank multiple rounds the ranks a goal searches for, not "
                              "explicit ones", remedy="give --ranks as you want them, without "
                              "--rank-multiple")

    @classmethod
    def parse_ranks(cls, texts: list[str]) -> Goal:
        """``["lstm_1=3,11 lstm_2=11,8", "fc=4"]`` (space- or option-separated) -> a ranks goal."""
        ranks: dict[str, tuple[int, ...]] = {}
        for item in " ".join(texts).split():
            layer, _, values = item.partition("=")
            try:
                ranks[layer] = tuple(int(v) for v in values.split(","))
            except ValueError:
                raise ConfigError(f"cannot read ranks {item!r}",
                                  remedy="write LAYER=B_IN,B_OUT, e.g. lstm_1=3,11") from None
            if not layer or not ranks[layer]:
                raise ConfigError(f"cannot read ranks {item!r}",
                                  remedy="write LAYER=B_IN,B_OUT, e.g. lstm_1=3,11")
        return cls(ranks=ranks)

    def to_json(self) -> dict[str, Any]:
        if self.ranks is not None:
            return {"ranks": {k: list(v) for k, v in self.ranks.items()}}
        multiple = {"rank_multiple": self.rank_multiple} if self.rank_multiple != 1 else {}
        if self.explained_variance is not None:
            return {"explained_variance": self.explained_variance, **multiple}
        return {"learnables_reduction": self.learnables_reduction, **multiple}

    def describe(self) -> str:
        if self.ranks is not None:
            return " ".join(f"{k}={','.join(map(str, v))}" for k, v in self.ranks.items())
        multiple = f", ranks multiples of {self.rank_multiple}" if self.rank_multiple != 1 else ""
        if self.explained_variance is not None:
            return f"explained variance {self.explained_variance:g}{multiple}"
        return f"learnables reduction {self.learnables_reduction:g}{multiple}"


@dataclass
class LayerPlan:
    """What happens to one layer: its ranks per map, its size before/after, or why it stays.

    ``explained_variance_kept`` (per map, once applied) is the basis curve at the rank: the
    neurons' variance kept for neuron PCA, the squared-singular-value energy kept for SVD.
    """

    layer: str
    ranks: dict[str, int]  # the activation a map reads ("input", "output") -> rank
    learnables_before: int
    learnables_projected: int
    projected: bool
    explained_variance_kept: dict[str, float] = field(default_factory=dict)

    @property
    def learnables_after(self) -> int:
        return self.learnables_projected if self.projected else self.learnables_before

    def to_json(self) -> dict[str, Any]:
        entry = {**asdict(self), "learnables_after": self.learnables_after}
        if not self.projected:
            entry["note"] = (f"not projected: ranks {self.ranks} would give "
                             f"{self.learnables_projected:,} learnables, not fewer than "
                             f"{self.learnables_before:,}")
        return entry


@dataclass
class CompressionRecord:
    """Everything a compressed model's config.json says about how it was made."""

    method: str  # "projection" or "svd"
    goal: Goal
    level: float | None  # the explained-variance level used (goal's, or found by the search)
    plans: dict[str, LayerPlan]
    learnables_before: int
    learnables_after: int
    curves: dict[str, np.ndarray]
    curve_key: str  # "explained_variance" (neuron PCA) or "singular_value_energy" (SVD)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, tuple[int, ...]]:
        """Ranks of the projected layers, as a :class:`Goal` takes them (to reproduce a size)."""
        return {name: tuple(plan.ranks.values())
                for name, plan in self.plans.items() if plan.projected}

    def skipped(self) -> list[str]:
        return [plan.to_json()["note"] for plan in self.plans.values() if not plan.projected]

    def to_json(self) -> dict[str, Any]:
        curves = {}
        for site, curve in self.curves.items():
            layer, _, reads = site.partition(".")
            plan = self.plans.get(layer)
            rank = plan.ranks.get(reads) if plan is not None and plan.projected else None
            curves[site] = {"explained_variance_curve": [round(float(v), 7) for v in curve],
                            "rank": rank}
        return {
            "method": self.method,
            "goal": self.goal.to_json(),
            "level": self.level,
            "ranks": {k: list(v) for k, v in self.ranks.items()},
            "layers": {name: plan.to_json() for name, plan in self.plans.items()},
            "learnables_before": self.learnables_before,
            "learnables_after": self.learnables_after,
            "learnables_reduction": 1.0 - self.learnables_after / self.learnables_before,
            self.curve_key: curves,
            **self.details,
        }


def layer_maps(network: SocNetwork, layer: str) -> dict[str, str]:
    """A learnable layer's maps by role, each with the activation it reads (its ``map_reads``)."""
    module = network.learnable_layers().get(layer)
    if module is None:
        raise ConfigError(f"no projectable layer {layer!r}",
                          remedy=f"choose from {list(network.learnable_layers())}")
    return module.map_reads


def layer_sites(network: SocNetwork, layer: str) -> list[str]:
    """The activations a layer's maps read, ``<layer>.input`` first (the order ranks take)."""
    return [f"{layer}.{reads}" for reads in layer_maps(network, layer).values()]


def rank_for_level(curve: np.ndarray, level: float, multiple: int = 1) -> int:
    """The smallest rank whose cumulative explained variance meets ``level`` (all at level >= 1),
    rounded up to a multiple of ``multiple`` but never past all of the neurons."""
    if level >= 1.0:
        return len(curve)
    rank = int(np.searchsorted(curve, level, side="left")) + 1
    return min(len(curve), -(-rank // multiple) * multiple)


def _learnables(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plan_layer(network: SocNetwork, layer: str, ranks: dict[str, int], *,
               only_if_smaller: bool = True) -> LayerPlan:
    """Size of ``layer`` before and with the given ranks (each map costs rank * (in + out)).

    The layer is to be projected when that makes it smaller (or always, if not ``only_if_smaller``).
    """
    module = network.get_submodule(layer)
    after = _learnables(module)
    for role, reads in layer_maps(network, layer).items():
        layer_map = getattr(module, role)
        rank = ranks[reads]
        if not 1 <= rank <= layer_map.in_features:
            raise ConfigError(f"rank {rank} for {layer}.{reads} is out of range",
                              remedy=f"use 1..{layer_map.in_features} (the number of neurons)")
        after += rank * (layer_map.in_features + layer_map.out_features) - _learnables(layer_map)
    before = _learnables(module)
    return LayerPlan(layer, dict(ranks), before, after, after < before or not only_if_smaller)


def _plans_at_level(network: SocNetwork, basis: Basis, layers: list[str], level: float,
                    only_if_smaller: bool, multiple: int = 1) -> dict[str, LayerPlan]:
    return {layer: plan_layer(network, layer, {
        reads: rank_for_level(basis.curve(f"{layer}.{reads}"), level, multiple)
        for reads in layer_maps(network, layer).values()}, only_if_smaller=only_if_smaller)
        for layer in layers}


def _total(network: SocNetwork, plans: dict[str, LayerPlan]) -> int:
    change = sum(p.learnables_after - p.learnables_before for p in plans.values())
    return network.learnables() + change


def choose_plans(network: SocNetwork, basis: Basis, goal: Goal, layers: list[str], *,
                 only_if_smaller: bool = True) -> tuple[dict[str, LayerPlan], float | None]:
    """Per-layer plans meeting ``goal``, and the level used (None for explicit ranks)."""
    if goal.ranks is not None:
        unknown = sorted(set(goal.ranks) - set(layers))
        if unknown:
            raise ConfigError(f"ranks given for {unknown}, which are not among the layers to "
                              f"project {layers}", remedy="check --ranks and --layers")
        plans = {}
        for layer, ranks in goal.ranks.items():
            reads = list(layer_maps(network, layer).values())
            if len(ranks) != len(reads):
                raise ConfigError(f"{layer} needs {len(reads)} ranks ({', '.join(reads)}), "
                                  f"got {list(ranks)}", remedy="e.g. lstm_1=3,11 fc=4")
            plans[layer] = plan_layer(network, layer, dict(zip(reads, ranks)),
                                      only_if_smaller=only_if_smaller)
        return plans, None
    if goal.explained_variance is not None:
        level = goal.explained_variance
        return _plans_at_level(network, basis, layers, level, only_if_smaller,
                               goal.rank_multiple), level
    budget = math.floor((1.0 - goal.learnables_reduction) * network.learnables())
    sites = [site for layer in layers for site in layer_sites(network, layer)]
    levels = sorted({1.0, *(float(v) for site in sites for v in basis.curve(site))}, reverse=True)
    for level in levels:  # learnables fall as the level falls: the first that fits keeps most
        plans = _plans_at_level(network, basis, layers, level, only_if_smaller,
                                goal.rank_multiple)
        if _total(network, plans) <= budget:
            return plans, level
    smallest = _total(network, _plans_at_level(network, basis, layers, 0.0, True,
                                               goal.rank_multiple))
    raise ConfigError(
        f"a {goal.learnables_reduction:.1%} reduction is out of reach: projecting {layers} at "
        f"rank {goal.rank_multiple} leaves {smallest:,} of {network.learnables():,} learnables",
        remedy="ask for a smaller reduction, a smaller --rank-multiple or project more layers "
               "(--layers)")


def apply_plans(network: SocNetwork, basis: Basis, plans: dict[str, LayerPlan],
                map_class: type[ProjectedMap] = ProjectedMap) -> SocNetwork:
    """A projected copy of ``network`` (:func:`~bsoc.compress.projection.project_layer`)."""
    compressed = copy.deepcopy(network)
    for plan in plans.values():
        if not plan.projected:
            continue
        sites = {reads: f"{plan.layer}.{reads}" for reads in plan.ranks}
        projections = {reads: (basis.projector(site, plan.ranks[reads]), basis.offset(site))
                       for reads, site in sites.items()}
        project_layer(compressed.get_submodule(plan.layer), projections, map_class)
        for reads, site in sites.items():
            plan.explained_variance_kept[reads] = float(basis.curve(site)[plan.ranks[reads] - 1])
    return compressed


def compress_with_basis(network: SocNetwork, basis: Basis, goal: Goal, layers: list[str] | None,
                        *, method: str, curve_key: str,
                        map_class: type[ProjectedMap] = ProjectedMap,
                        only_if_smaller: bool = True) -> tuple[SocNetwork, CompressionRecord]:
    """Choose ranks for ``goal`` from ``basis``, apply them; the network itself is not changed."""
    layers = list(layers or network.learnable_layers())
    for layer in layers:
        layer_maps(network, layer)  # validates the name
    plans, level = choose_plans(network, basis, goal, layers, only_if_smaller=only_if_smaller)
    compressed = apply_plans(network, basis, plans, map_class)
    curves = {site: basis.curve(site)
              for layer in network.learnable_layers() for site in layer_sites(network, layer)}
    record = CompressionRecord(method, goal, level, plans, network.learnables(),
                               compressed.learnables(), curves, curve_key)
    return compressed, record


def compress_network_using_projection(
    network: SocNetwork, pca: NeuronPCA, goal: Goal, *, layers: list[str] | None = None,
    only_if_smaller: bool = True,
) -> tuple[SocNetwork, CompressionRecord]:
    """Project ``layers`` (default: lstm_1, lstm_2, fc) of ``network`` onto ``pca``'s eigen-neurons.

    Returns the projected network (a copy) and the record for its config.json. A layer
    whose ranks would not make it smaller stays as it is, unless ``only_if_smaller`` is
    False (then, at explained variance 1, every projector is a full orthogonal basis and
    the projected network computes the original function: the limit the article names).
    """
    compressed, record = compress_with_basis(network, pca, goal, layers, method="projection",
                                             curve_key="explained_variance",
                                             only_if_smaller=only_if_smaller)
    record.details["mean_handling"] = pca.mean_handling
    record.details["pca_samples"] = int(pca.n_samples_)
    return compressed, record
