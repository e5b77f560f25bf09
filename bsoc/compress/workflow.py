"""Model folders in, model folders out: compress, analyse, sweep (what the CLI and pipeline call).

Each function reads a trained model folder and a dataset, does one job and records how:
the compressed model's ``config.json`` carries the compression record (goal, ranks,
explained variance kept per layer, learnables before/after, explained-variance curves),
the source model, the data the PCA saw, and its validation accuracy right after
compression (no fine-tuning; that is :mod:`bsoc.compress.finetune`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bsoc.compress.activations import site_aliases
from bsoc.compress.goals import (
    CompressionRecord,
    Goal,
    compress_network_using_projection,
    layer_maps,
    plan_layer,
    rank_for_level,
)
from bsoc.compress.projection import MeanHandling, NeuronPCA
from bsoc.compress.svd import compress_network_using_svd
from bsoc.data.dataset import Dataset
from bsoc.errors import ConfigError
from bsoc.estimator import SocEstimator
from bsoc.evaluate import evaluate
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import SocNetwork

ANALYSIS_LEVELS: tuple[float, ...] = (0.9, 0.95, 0.99, 0.999)
SWEEP_LEVELS: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)
KINDS = {"projection": "projected-lstm", "svd": "svd-lstm"}
Progress = Callable[[int, int], None]


def validation_metrics(network: SocNetwork, data: Dataset,
                       scenarios: tuple[str, ...] = ("from_start", "cold_start"),
                       make: Callable[[SocNetwork], SocEstimator] = LstmSocEstimator
                       ) -> dict[str, Any]:
    """Accuracy on the validation split's whole cycles (the same measure training keeps)
    of the estimator ``make`` builds on ``network``."""
    cycles = data.split("val")
    if not cycles:
        raise ConfigError(f"dataset {data.name} has no val split to measure on",
                          remedy="re-split the dataset so that val holds at least one cycle")
    return evaluate(make(network), cycles, scenarios=scenarios)


def fit_pca(network: SocNetwork, data: Dataset, mean_handling: MeanHandling = "fold-into-bias",
            on_progress: Progress | None = None) -> NeuronPCA:
    """Neuron PCA of ``network`` over ``data``'s training split."""
    train = data.split("train")
    if not train:
        raise ConfigError(f"dataset {data.name} has no train split for the neuron PCA",
                          remedy="use the dataset the model was trained on")
    return NeuronPCA(mean_handling).fit(network, train, on_progress)


def compress(
    source: LstmSocEstimator, data: Dataset, goal: Goal, *, method: str = "projection",
    layers: list[str] | None = None, mean_handling: MeanHandling = "fold-into-bias",
    svd_ranks: str = "matched", pca: NeuronPCA | None = None, on_progress: Progress | None = None,
) -> tuple[SocNetwork, CompressionRecord]:
    """Compress ``source``'s network by projection or truncated SVD for ``goal``.

    SVD ranks: ``"matched"`` uses the ranks projection chooses for the same goal (equal
    learnables, map by map: the fair comparison); ``"energy"`` chooses them from the
    singular values alone (data-free). Explicit ranks are used as given either way.
    """
    if method not in KINDS:
        raise ConfigError(f"unknown method {method!r}", remedy=f"use one of {sorted(KINDS)}")
    if svd_ranks not in ("matched", "energy"):
        raise ConfigError(f"unknown SVD rank choice {svd_ranks!r}", remedy="use matched or energy")
    network = source.network
    needs_pca = method == "projection" or (svd_ranks == "matched" and goal.ranks is None)
    if needs_pca and pca is None:
        pca = fit_pca(network, data, mean_handling, on_progress)
    if method == "projection":
        return compress_network_using_projection(network, pca, goal, layers=layers)
    svd_goal = goal
    if needs_pca:
        _, matched = compress_network_using_projection(network, pca, goal, layers=layers)
        svd_goal = Goal(ranks=matched.ranks)
    compressed, record = compress_network_using_svd(network, svd_goal, layers=layers)
    record.goal = goal
    record.details["svd_ranks"] = ("as projection chooses for the goal (equal learnables)"
                                   if needs_pca else "from the singular values (data-free)")
    return compressed, record


def compress_model(
    model: Path, data: Dataset, out: Path, goal: Goal, *, method: str = "projection",
    layers: list[str] | None = None, mean_handling: MeanHandling = "fold-into-bias",
    svd_ranks: str = "matched", command: str = "", force: bool = False,
    on_progress: Progress | None = None,
) -> tuple[LstmSocEstimator, CompressionRecord]:
    """Compress the model folder ``model``; write the result (projected/svd-lstm) to ``out``."""
    source = LstmSocEstimator.load(model)
    compressed, record = compress(source, data, goal, method=method, layers=layers,
                                  mean_handling=mean_handling, svd_ranks=svd_ranks,
                                  on_progress=on_progress)
    record.details["source_model"] = {
        "path": str(model), "name": source.name, "kind": source.kind,
        "learnables": source.learnables(),
        "val_rmse_pct": source.metadata.get("validation", {}).get("rmse_pct"),
    }
    record.details["data"] = {"name": data.name, "fingerprint": data.fingerprint()}
    estimator = LstmSocEstimator(compressed, kind=KINDS[method], name=out.name)
    estimator.metadata = {
        **{k: v for k, v in source.metadata.items() if k in ("data", "seed", "training")},
        "compression": record.to_json(),
        "validation": validation_metrics(compressed, data),
        "learnables_table": compressed.learnables_table(),
        "command": command,
    }
    estimator.save(out, force=force)
    return estimator, record


def analyze(network: SocNetwork, pca: NeuronPCA,
            levels: tuple[float, ...] = ANALYSIS_LEVELS) -> dict[str, Any]:
    """Per layer: neurons, rank per slot for each explained-variance level, and the learnables.

    A layer's learnables at a level are those of the layer projected at those ranks (even
    when that is not smaller: the number shows why such a layer would be skipped).
    """
    layers = []
    totals = {str(level): network.learnables() for level in levels}
    for layer in network.learnable_layers():
        module = network.get_submodule(layer)
        maps = layer_maps(network, layer)
        entry: dict[str, Any] = {
            "layer": layer, "learnables": sum(p.numel() for p in module.parameters()),
            "neurons": {reads: getattr(module, role).in_features for role, reads in maps.items()},
            "levels": {},
        }
        for level in levels:
            ranks = {reads: rank_for_level(pca.curve(f"{layer}.{reads}"), level)
                     for reads in maps.values()}
            plan = plan_layer(network, layer, ranks)
            entry["levels"][str(level)] = {"ranks": ranks, "learnables": plan.learnables_projected,
                                           "projected": plan.projected}
            totals[str(level)] += plan.learnables_after - plan.learnables_before
        layers.append(entry)
    readers: dict[str, list[str]] = {}  # one curve per distinct activation, named by its readers
    for site, source in site_aliases(network).items():
        readers.setdefault(source, []).append(site)
    curves = {" = ".join(sites): {"explained_variance_curve": [round(float(v), 7)
                                                               for v in pca.curve(source)],
                                  "rank": None} for source, sites in readers.items()}
    return {"levels": list(levels), "layers": layers, "network_learnables": network.learnables(),
            "network_learnables_at_level": totals, "explained_variance": curves,
            "mean_handling": pca.mean_handling, "pca_samples": int(pca.n_samples_)}


def sweep(
    source: LstmSocEstimator, data: Dataset, *, levels: tuple[float, ...] = SWEEP_LEVELS,
    layers: list[str] | None = None, mean_handling: MeanHandling = "fold-into-bias",
    on_progress: Progress | None = None,
    on_point: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """RMSE (from the first sample, val split, no fine-tuning) against learnables.

    One projection per explained-variance level, and truncated SVD at the same ranks
    (equal learnables); levels that give the same ranks are measured once.
    """
    pca = fit_pca(source.network, data, mean_handling, on_progress)
    points: dict[str, list[dict[str, Any]]] = {"projection": [], "svd": []}
    seen: set[tuple] = set()
    for level in levels:
        compressed, record = compress_network_using_projection(
            source.network, pca, Goal(explained_variance=level), layers=layers)
        key = tuple(sorted(record.ranks.items()))
        if key in seen or not record.ranks:
            continue
        seen.add(key)
        svd_network, _ = compress_network_using_svd(source.network, Goal(ranks=record.ranks),
                                                    layers=layers)
        for method, network in (("projection", compressed), ("svd", svd_network)):
            point = {"goal": {"explained_variance": level}, "learnables": network.learnables(),
                     "rmse_pct": validation_metrics(network, data, ("from_start",))["rmse_pct"],
                     "ranks": {k: list(v) for k, v in record.ranks.items()}}
            points[method].append(point)
            if on_point is not None:
                on_point(method, point)
    return points
