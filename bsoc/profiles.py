"""Run profiles: every size knob of ``tiny``, ``quick`` and ``full``, in one place.

A profile says how big a run is: how much ``bsoc data simulate --profile`` simulates, the
network and the training of ``bsoc train --profile``, and what ``bsoc pipeline --profile``
adds on top (compression goal, fine-tuning and pretraining budgets, benchmark plan). The
domains take the configurations themselves; only the commands and the pipeline pick a
profile by name (:func:`run_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bsoc.data.simulate import Scale
from bsoc.data.windows import WindowPlan
from bsoc.errors import ConfigError
from bsoc.nn.network import NetworkConfig
from bsoc.train import TrainConfig


@dataclass(frozen=True)
class RunProfile:
    """The sizes of one named run."""

    name: str
    description: str
    simulation: Scale  # bsoc data simulate
    network: NetworkConfig  # bsoc train
    train: TrainConfig
    learnables_reduction: float  # the pipeline's compression goal for the projected model
    finetune_epochs: int
    # A time limit on fine-tuning anneals its learning rate over the budget (see
    # bsoc.train.training_progress): the quick profile's is the budget, the full one's a net.
    finetune_max_minutes: float | None
    # On a user's own cells the pipeline first trains on bsoc's simulated ones (the training
    # ablation's best recipe, README "Real cells"): which profile's cells, and for how long.
    pretraining_cells: str
    pretraining_epochs: int | None
    pretraining_max_minutes: float | None
    quick_benchmark: bool  # the benchmark's short speed plan


PROFILES: dict[str, RunProfile] = {
    "tiny": RunProfile(
        name="tiny",
        description="tests: a 16/8 network, seconds (one thread: too small to share)",
        simulation=Scale((0.0, 25.0), 1, 1, 1, (1.0,), 0, 900.0, 1800.0),
        network=NetworkConfig(hidden_sizes=(16, 8)),
        train=TrainConfig(epochs=3, batch_size=8, samples_per_epoch=2048, patience=3, threads=1,
                          window=WindowPlan(length=64, warmup=8)),
        # a network this small cannot lose 90 % of its learnables (rank-1 layers hold more)
        learnables_reduction=0.5,
        finetune_epochs=2,
        finetune_max_minutes=None,
        pretraining_cells="tiny",
        pretraining_epochs=1,
        pretraining_max_minutes=None,
        quick_benchmark=True,
    ),
    "quick": RunProfile(
        name="quick",
        description="demo: Table-1 network, about 3-4 minutes on 2 cores",
        simulation=Scale((-10.0, 0.0, 10.0, 25.0, 40.0), 4, 1, 2, (0.5, 1.0), 1,
                         2 * 3600.0, 3 * 3600.0),
        network=NetworkConfig(),
        train=TrainConfig(epochs=40, window=WindowPlan(length=500, warmup=50), patience=10,
                          max_minutes=3.5),
        learnables_reduction=0.9,
        finetune_epochs=4,
        # a minute each keeps `make demo` within 15 minutes on 2 cores
        finetune_max_minutes=1.0,
        pretraining_cells="quick",
        pretraining_epochs=None,
        pretraining_max_minutes=2.0,
        quick_benchmark=True,
    ),
    # Bounded by epochs of a fixed number of samples, so the same command gives the same
    # model on any machine and costs the same on any dataset; the time limit is only a
    # safety net. The recipe is the training ablation's best (README, "Real cells").
    "full": RunProfile(
        name="full",
        description="best accuracy: Table-1 network, 60 epochs (about 30 minutes on 2 cores)",
        simulation=Scale((-10.0, 0.0, 10.0, 25.0, 40.0), 12, 4, 8, (0.5, 1.0, 2.0), 2,
                         4 * 3600.0, 4 * 3600.0),
        network=NetworkConfig(),
        train=TrainConfig(epochs=60, samples_per_epoch=400_000,
                          window=WindowPlan(length=500, warmup=50, cover_ends=True), patience=60,
                          learning_rate=2e-3, max_minutes=120.0),
        learnables_reduction=0.9,
        finetune_epochs=10,
        # a safety net only: the epochs bound it, so it gives the same model on any machine
        finetune_max_minutes=30.0,
        # the quick cells simulate in minutes, so the whole training stays within an hour
        pretraining_cells="quick",
        pretraining_epochs=20,
        pretraining_max_minutes=None,
        quick_benchmark=False,
    ),
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def run_profile(name: str) -> RunProfile:
    """The profile called ``name``, or a one-line error listing the profiles."""
    if name not in PROFILES:
        raise ConfigError(f"unknown --profile {name!r}", remedy=f"use one of {list(PROFILES)}")
    return PROFILES[name]
