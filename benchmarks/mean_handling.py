"""Which way of keeping the neurons' mean projects better? (issue 5; decides the default)

LSTM hidden states have a large non-zero mean. Three treatments of it, compared on a
trained model at the same learnables-reduction goals, RMSE on the validation split from
the first sample, no fine-tuning:

* ``fold-into-bias``  centred PCA, ``x ~ mu + Q Q^T (x - mu)``, ``W (I - Q Q^T) mu`` into the bias;
* ``second-moment``   uncentred PCA of ``E[x x^T]`` (the mean is one of the eigen-neurons);
* ``mean-dropped``    centred PCA used as if uncentred (``x ~ Q Q^T x``): the mistake the
  issue warns about, shown for scale.

Each treatment also runs at the fold-into-bias ranks (equal ranks, equal learnables).

    .venv/bin/python benchmarks/mean_handling.py --model models/lstm --data data/sim \
        --out reports/mean_handling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bsoc import __version__
from bsoc.compress.goals import Goal, compress_with_basis
from bsoc.compress.projection import NeuronPCA
from bsoc.compress.workflow import validation_metrics
from bsoc.data.dataset import Dataset
from bsoc.errors import ConfigError
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import SocNetwork


class MeanDropped:
    """A centred PCA whose mean is ignored when projecting (the naive, wrong treatment)."""

    def __init__(self, pca: NeuronPCA) -> None:
        self.pca = pca

    def curve(self, site: str) -> np.ndarray:
        return self.pca.curve(site)

    def projector(self, site: str, rank: int) -> np.ndarray:
        return self.pca.projector(site, rank)

    def offset(self, site: str) -> np.ndarray:
        return np.zeros_like(self.pca.mean_[site])


def _compare(network: SocNetwork, data: Dataset, bases: dict[str, Any],
             reduction: float) -> list[dict[str, Any]]:
    """Every treatment at the goal, and the others also at fold-into-bias's ranks."""
    rows: list[dict[str, Any]] = []
    fold_ranks: dict[str, tuple[int, ...]] = {}
    for name, basis in bases.items():  # fold-into-bias first: its ranks are the reference
        goals = [("goal", Goal(learnables_reduction=reduction))]
        if fold_ranks:
            goals.append(("fold ranks", Goal(ranks=fold_ranks)))
        for goal_name, goal in goals:
            compressed, record = compress_with_basis(network, basis, goal, None,
                                                     method="projection",
                                                     curve_key="explained_variance")
            fold_ranks = fold_ranks or record.ranks
            rows.append({
                "reduction_goal": reduction, "mean_handling": name, "ranks_from": goal_name,
                "ranks": {k: list(v) for k, v in record.ranks.items()},
                "learnables": record.learnables_after,
                "rmse_pct": validation_metrics(compressed, data, ("from_start",))["rmse_pct"],
            })
            print(f"{reduction:5.2f} {name:15s} {goal_name:10s} {str(rows[-1]['ranks']):40s} "
                  f"{rows[-1]['learnables']:8,d} {rows[-1]['rmse_pct']:7.3f} %", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained model (kind lstm)")
    parser.add_argument("--data", type=Path, required=True, help="dataset (train: PCA, val: RMSE)")
    parser.add_argument("--reductions", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.97, 0.98])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    source = LstmSocEstimator.load(args.model)
    data = Dataset.load(args.data)
    network = source.network
    fold = NeuronPCA("fold-into-bias").fit(network, data.split("train"))
    second = NeuronPCA("second-moment").fit(network, data.split("train"))
    bases = {"fold-into-bias": fold, "second-moment": second, "mean-dropped": MeanDropped(fold)}
    uncompressed = validation_metrics(network, data, ("from_start",))["rmse_pct"]
    rows: list[dict[str, Any]] = []
    for reduction in args.reductions:
        try:
            rows += _compare(network, data, bases, reduction)
        except ConfigError as error:  # e.g. a reduction beyond rank 1 everywhere
            print(f"{reduction:5.2f} skipped: {error}")
    result = {
        "model": str(args.model), "data": {"name": data.name, "fingerprint": data.fingerprint()},
        "uncompressed_val_rmse_pct": uncompressed, "rmse": "val split, from the first sample, "
        "no fine-tuning", "rows": rows, "seconds": round(time.perf_counter() - started, 1),
        "bsoc_version": __version__,
    }
    print(f"uncompressed: {uncompressed:.3f} %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
