"""Training ablation: each change to how the LSTM is trained, alone and together, with seeds.

Every variant trains the same network (a profile's, Table 1 by default) for the same number
of epochs on the same dataset, with no time limit, so the figures do not depend on how
busy the machine was; each is then evaluated on the validation and test splits in all
three scenarios. One JSON file holds every run (appended as runs finish, so a long ablation
can be stopped and resumed), and a Markdown table with mean and spread over seeds is
printed at the end.

    python benchmarks/training_ablation.py --data data/panasonic --epochs 40 \\
        --variants windows,stateful,windows+augmented,stateful+augmented --seeds 0 \\
        --out reports/ablation/panasonic.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from seed_spread import spread  # beside this script: run as benchmarks/training_ablation.py

from bsoc.bench.machine import machine_info
from bsoc.data.augment import SensorAugmentation
from bsoc.data.dataset import Dataset
from bsoc.data.windows import WindowPlan
from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.ekf.rescale import gentler_drives
from bsoc.evaluate import evaluate
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.profiles import PROFILES
from bsoc.train import TrainConfig, fit, new_network

# Sensor errors of the order Vidal, Kollmeyer et al. (2020) trained with on this cell.
SENSOR_ERRORS = SensorAugmentation(voltage_offset_v=0.004, current_offset_a=0.11,
                                   temperature_offset_c=5.0, voltage_noise_v=0.002,
                                   current_noise_a=0.05, temperature_noise_c=0.5)
WINDOWS = {"window": WindowPlan(length=500, warmup=50, from_start_fraction=0.25),
           "batch_size": 32, "chunk": None}
# Same batch and chunk as WINDOWS, so both cost the same per step and take as many steps.
# At the windows' peak rate (2e-3) whole-cycle training diverged (validation 25-45 % after
# ten epochs): a state carried over hours makes the loss far more sensitive to the weights.
WHOLE_CYCLES = {"window": WindowPlan(length=16384, warmup=100, from_start_fraction=0.5),
                "batch_size": 32, "chunk": 500, "learning_rate": 5e-4}
# Between the two: 33 minutes of context, the state carried through four 500-sample chunks.
LONG_WINDOWS = {"window": WindowPlan(length=2000, warmup=100, from_start_fraction=0.25),
                "batch_size": 32, "chunk": 500, "learning_rate": 1e-3}
BASES: dict[str, dict[str, Any]] = {"windows": WINDOWS, "long": LONG_WINDOWS,
                                    "stateful": WHOLE_CYCLES}
# The SOC change over 10 s must match the charge moved, weighted like the level error.
COULOMB = {"coulomb_weight": 1.0, "coulomb_lag": 10}
# Validation judges, and training keeps, the average of about the last 100 steps (4 epochs).
AVERAGED = {"average_decay": 0.99}
# A new network's gate biases spread its units' memories up to a drive cycle's length.
CHRONO = {"chrono_max_steps": 10_000}
# Twice the optimiser steps on the same samples: 50 an epoch instead of 25.
HALF_BATCH = {"batch_size": 16}
# AdamW's decay strong enough to matter in the full profile's 1,500 steps: the weights
# shrink by about 14 % over the run where no gradient holds them (the default 1e-4: 0.02 %).
DECAY = {"weight_decay": 0.1}
# `+trainval`: the validation cycles are trained on too (10 more drive cycles, two at every
# temperature), to measure what more real data is worth. Validation still picks the epoch
# kept, so its figure is not held out; the test split stays untouched.
# `+gentle`: every training drive is trained on a second time at half its current and
# twice its duration, its voltage moved by the identified ECM (bsoc.ekf.rescale), because
# the cold test UDDS cycles draw half the current of every cold training drive.
GENTLE_SCALES = (0.5,)
# a variant is a base and any of these, joined by "+": "stateful+augmented+pretrained"
MODIFIERS = ("augmented", "pretrained", "coulomb", "ends", "averaged", "batch16", "chrono",
             "decay", "trainval", "gentle")
# Modifiers that change what is trained on or from, not the training config.
DATA_MODIFIERS = frozenset({"pretrained", "trainval", "gentle"})


def parse_variant(variant: str) -> tuple[dict[str, Any], frozenset[str]]:
    """The config overrides of ``variant`` and which of ``DATA_MODIFIERS`` it has."""
    base, *modifiers = variant.split("+")
    if base not in BASES or not set(modifiers) <= set(MODIFIERS):
        raise ValueError(f"unknown variant {variant!r}: a base of {sorted(BASES)} and any "
                         f"of {MODIFIERS}, joined by '+'")
    overrides = dict(BASES[base])
    if "augmented" in modifiers:
        overrides["augmentation"] = SENSOR_ERRORS
    if "coulomb" in modifiers:
        overrides.update(COULOMB)
    if "averaged" in modifiers:
        overrides.update(AVERAGED)
    if "batch16" in modifiers:
        overrides.update(HALF_BATCH)
    if "chrono" in modifiers:
        overrides.update(CHRONO)
    if "decay" in modifiers:
        overrides.update(DECAY)
    if "ends" in modifiers:  # random windows also cover each cycle's last samples
        overrides["window"] = replace(overrides["window"], cover_ends=True)
    return overrides, DATA_MODIFIERS & set(modifiers)


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the ablation table compares, from an :func:`evaluate` result."""
    cold = result["scenarios"]["cold_start"]
    by_temperature = {f"{row['temperature_c']:g}": row["rmse_pct"]
                      for row in result["by_temperature"]}
    mae_25 = next((row["mae_pct"] for row in result["by_temperature"]
                   if row["temperature_c"] == 25.0), None)
    return {
        "rmse_pct": result["rmse_pct"],
        "cold_start_rmse_pct": cold["rmse_pct"],
        "degraded_rmse_pct": result["scenarios"]["degraded_sensors"]["rmse_pct"],
        "mae_25c_pct": mae_25,
        "rmse_by_temperature_pct": by_temperature,
        "cold_start_median_convergence_s": cold["convergence_s_median"],
        "cold_start_not_converged": len(cold["not_converged_cycles"]),
        "cycles": result["cycles"],
    }


def run_variant(data: Dataset, variant: str, seed: int, base: TrainConfig,
                pretrained: Path | None, models: Path | None,
                learning_rate: float | None = None, ecm: Path | None = None) -> dict[str, Any]:
    overrides, data_modifiers = parse_variant(variant)
    if learning_rate is not None:  # the command line's rate beats a base's own
        overrides["learning_rate"] = learning_rate
    config = replace(base, seed=seed, **overrides)
    train, val = data.split("train"), data.split("val")
    if "trainval" in data_modifiers:
        train = train + val
    if "gentle" in data_modifiers:
        if ecm is None:
            raise ValueError(f"{variant} needs --ecm MODEL")
        train = train + gentler_drives(train, EkfSocEstimator.load(ecm).tables, GENTLE_SCALES)
    if "pretrained" in data_modifiers:
        if pretrained is None:
            raise ValueError(f"{variant} needs --pretrained MODEL")
        network = LstmSocEstimator.load(pretrained).network
    else:
        network = new_network(PROFILES["full"].network, train, seed, config.chrono_max_steps)
    def report_epoch(info: dict[str, Any]) -> None:
        if info["step"] % max(1, info["total_steps"] // config.epochs) == 0:
            print(f"  {variant} seed {seed}: epoch {info['epoch']}, val score "
                  f"{info['val_rmse_pct']:.2f} %", flush=True)

    result = fit(network, train, val, config, on_step=report_epoch)
    estimator = LstmSocEstimator(network, name=variant)
    if models is not None:
        estimator.metadata = {"training": {"config": config.to_json(), **result.to_json()},
                              "data": {"name": data.name, "fingerprint": data.fingerprint()},
                              "seed": seed}
        estimator.save(models / f"{variant}-seed{seed}", force=True)
    return {
        "variant": variant, "seed": seed, "config": config.to_json(),
        "history": result.history,
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "stopped": result.stopped, "train_seconds": result.seconds,
        "val": figures(evaluate(estimator, val)),
        "test": figures(evaluate(estimator, data.split("test"))),
    }


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per variant, mean ± sample standard deviation over its seeds."""
    header = ("| variant | seeds | best epoch | val RMSE | test RMSE | test cold start | "
              "test degraded | test MAE 25 °C | test RMSE −20 °C | cold-start median "
              "convergence | outside 5 points at the end |")
    lines = [header, "|" + "---|" * 11]
    for variant in dict.fromkeys(run["variant"] for run in runs):
        mine = [run for run in runs if run["variant"] == variant]
        test = [run["test"] for run in mine]
        lines.append(" | ".join([
            f"| {variant}", str(len(mine)), spread([r["best_epoch"] for r in mine], 0),
            spread([r["val"]["rmse_pct"] for r in mine]) + " %",
            spread([t["rmse_pct"] for t in test]) + " %",
            spread([t["cold_start_rmse_pct"] for t in test]) + " %",
            spread([t["degraded_rmse_pct"] for t in test]) + " %",
            spread([t["mae_25c_pct"] for t in test]) + " %",
            spread([t["rmse_by_temperature_pct"].get("-20") for t in test]) + " %",
            spread([t["cold_start_median_convergence_s"] for t in test], 0) + " s",
            (spread([t["cold_start_not_converged"] for t in test], 1)
             + f" of {test[0]['cycles']} |"),
        ]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=1000, help="default: no early stop")
    parser.add_argument("--lr", type=float, help="peak learning rate of every variant "
                        "(default: the full profile's, or the base's own for long and "
                        "stateful); lower it to compare variants as fine-tuning")
    parser.add_argument("--variants", default="windows,stateful,windows+augmented,"
                        "stateful+augmented")
    parser.add_argument("--pretrained", type=Path, help="model the +pretrained variants start "
                        "from (e.g. trained on bsoc's simulated cells)")
    parser.add_argument("--ecm", type=Path, help="EKF model whose ECM makes the +gentle "
                        "variants' drives (fitted on the same training split)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="folder to save each run's model in")
    args = parser.parse_args()
    data = Dataset.load(args.data)
    base = replace(PROFILES["full"].train, epochs=args.epochs, patience=args.patience,
                   max_minutes=None, threads=args.threads)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    done = {(run["variant"], run["seed"]) for run in runs}
    for variant in args.variants.split(","):
        try:
            parse_variant(variant)
        except ValueError as error:
            parser.error(str(error))
        for seed in (int(s) for s in args.seeds.split(",")):
            if (variant, seed) in done:
                continue
            started = time.monotonic()
            runs.append(run_variant(data, variant, seed, base, args.pretrained, args.models,
                                    args.lr, args.ecm))
            print(f"{variant} seed {seed}: test RMSE {runs[-1]['test']['rmse_pct']:.2f} % "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"data": str(args.data), "epochs": args.epochs,
                                            "machine": machine_info(), "runs": runs}, indent=1))
    print(table(runs))


if __name__ == "__main__":
    main()
