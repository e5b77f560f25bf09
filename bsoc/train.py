"""Training and fine-tuning: one loop, :func:`fit`, for any :class:`~bsoc.nn.network.SocNetwork`.

``fit`` takes a network (fresh, trained or compressed) and improves it on training windows
(:mod:`bsoc.data.windows`): random windows with a zero state and a masked warm-up, plus
windows from the cycle start, so the model is trained exactly as it runs live. Windows
longer than ``chunk`` samples are trained by truncated back-propagation through time: the
network steps through a batch of windows ``chunk`` samples at a time, one optimiser step
per chunk, its state carried (detached) from chunk to chunk, so a window can be a whole
drive cycle of hours while memory and the gradient's path stay one chunk long. Windows
run end to end in ``batch_size`` lanes (:class:`bsoc.data.windows.Lanes`), so whole cycles
of unequal length waste little on padding and every batch mixes many cycles. The inputs
can be augmented with sensor offsets and noise (:mod:`bsoc.data.augment`); the targets
never are. Each epoch
it validates on the validation split's *whole* cycles, both from the first sample and
from a cold start 25 % in (:class:`bsoc.evaluate.ScenarioSettings`), and keeps the weights
with the best mean of the two RMSEs (early stopping); with ``average_decay`` it judges and
keeps a moving average of the weights instead (:mod:`bsoc.weight_average`).

Reproducible and resumable: epoch ``e`` draws its windows and dropout masks from seeds
``(seed, e)``, and the learning rate is a pure function of the step, so a checkpoint
(:mod:`bsoc.train_checkpoint`: weights, best weights, AdamW moments, history; no pickle)
written after every epoch lets ``resume=True`` continue as if never stopped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from bsoc.data.augment import SensorAugmentation
from bsoc.data.dataset import Dataset
from bsoc.data.schema import Cycle
from bsoc.data.windows import (
    Lanes,
    Normalisation,
    SequenceSet,
    WindowPlan,
    sample_windows,
    window_extents,
    windows_to_cover,
)
from bsoc.errors import ConfigError, ModelFileError
from bsoc.evaluate import ScenarioSettings
from bsoc.nn.layers import LstmState
from bsoc.nn.network import NetworkConfig, SocNetwork
from bsoc.train_checkpoint import Checkpoint
from bsoc.weight_average import WeightAverage

if TYPE_CHECKING:
    from bsoc.nn.estimator import LstmSocEstimator


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one :func:`fit` run (recorded in the model's config.json)."""

    epochs: int = 40
    batch_size: int = 32
    # what one epoch trains on, so that a profile costs the same on any dataset; None: as
    # many windows as cover the train split once
    samples_per_epoch: int | None = None
    window: WindowPlan = field(default_factory=WindowPlan)
    chunk: int | None = None  # truncated-BPTT length in samples; None: whole windows
    augmentation: SensorAugmentation = field(default_factory=SensorAugmentation)
    learning_rate: float = 3e-3
    min_lr_fraction: float = 0.05  # cosine decay ends at this fraction of the peak
    warmup_fraction: float = 0.03  # linear learning-rate warm-up, fraction of all steps
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    # weight of the coulomb-consistency term (0: plain MSE) and its lag in samples
    coulomb_weight: float = 0.0
    coulomb_lag: int = 10
    # decay per optimiser step of the weight average validation judges and training keeps
    # (bsoc.weight_average); 0: the weights themselves
    average_decay: float = 0.0
    # a new network's gate biases by chrono initialisation for memories of up to this many
    # samples (Lstm.chrono_initialise); None: PyTorch's. Starting from a trained model, unused.
    chrono_max_steps: int | None = None
    patience: int = 8  # epochs without validation improvement before stopping
    max_minutes: float | None = None
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(f"invalid training config: epochs={self.epochs}, "
                              f"batch_size={self.batch_size}, lr={self.learning_rate}",
                              remedy="use positive epochs, batch size and learning rate")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError("--max-minutes must be positive", remedy="e.g. --max-minutes 5")
        if self.coulomb_weight < 0 or self.coulomb_lag < 1:
            raise ConfigError(f"coulomb term weight {self.coulomb_weight} and lag "
                              f"{self.coulomb_lag} must be >= 0 and >= 1",
                              remedy="e.g. weight 1.0 and a lag of 10 samples")
        if not 0.0 <= self.average_decay < 1.0:
            raise ConfigError(f"weight-average decay {self.average_decay} must be in [0, 1)",
                              remedy="e.g. 0.99 (about the last 100 steps), or 0 for none")
        if self.chrono_max_steps is not None and self.chrono_max_steps <= 2:
            raise ConfigError(f"chrono_max_steps {self.chrono_max_steps} must exceed 2",
                              remedy="e.g. 10000 (a drive cycle's hours at 1 Hz), or None")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"chunk {self.chunk} must be a positive number of samples",
                              remedy="e.g. 1000, or None to train whole windows")

    @property
    def chunk_length(self) -> int:
        return self.chunk or self.window.length

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a recorded config; models trained before chunking and augmentation
        existed recorded neither, and were trained with neither."""
        data = dict(data)
        window = WindowPlan(**data.pop("window"))
        windows = data.pop("windows_per_epoch", None)  # what bsoc 0.1 recorded
        if windows is not None:
            data["samples_per_epoch"] = windows * window.length
        return cls(**{**data, "window": window,
                      "augmentation": SensorAugmentation(**data.get("augmentation", {}))})


class TrainingProfile(Protocol):
    """What training takes from a run profile (:class:`bsoc.profiles.RunProfile`)."""

    @property
    def name(self) -> str: ...

    @property
    def network(self) -> NetworkConfig: ...

    @property
    def train(self) -> TrainConfig: ...


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, the epoch kept, and why it stopped."""

    history: list[dict[str, Any]]
    initial_validation: dict[str, float]  # of the weights fit was given (epoch 0)
    best_epoch: int  # 0: no epoch beat the weights fit was given, which are kept
    best_validation: dict[str, float]
    stopped: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def training_progress(done: float, elapsed_s: float, max_minutes: float | None) -> float:
    """Fraction of the run done: ``done`` (epochs done / epochs, counted in steps within an
    epoch), or the share of the time budget used if that is further along, so that a
    time-limited run still anneals its learning rate instead of stopping at a high rate
    part-way down the schedule."""
    if max_minutes is None:
        return min(1.0, done)
    return min(1.0, max(done, elapsed_s / (60 * max_minutes)))


def learning_rate_at(progress: float, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_fraction`` of the peak at ``progress`` 1."""
    warmup = config.warmup_fraction
    if progress < warmup:
        return config.learning_rate * progress / warmup
    decayed = min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))
    floor = config.min_lr_fraction
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * decayed)))


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((prediction - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def coulomb_consistency(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        lag: int) -> torch.Tensor:
    """Mean squared mismatch between the predicted and the true SOC change over ``lag`` samples.

    The reference SOC is a charge count, so its change over any stretch is the charge the
    current moved. A network that follows each current pulse with its voltage instead of
    integrating the current has errors that move from sample to sample: the level MSE
    weighs them by their size only, this term by how fast they move. Pairs count where
    both ends are in the loss mask; an error that stays constant costs nothing here.
    """
    both = mask[:, lag:] & mask[:, :-lag]
    mismatch = (prediction[:, lag:] - prediction[:, :-lag]) - (target[:, lag:] - target[:, :-lag])
    return (mismatch**2 * both).sum() / both.sum().clamp(min=1)


def _rmse_pct(network: SocNetwork, data: SequenceSet, counted_after_s: float = 0.0) -> float:
    x, y, mask = data.padded()
    for n, time_s in enumerate(data.time_s):
        mask[n, : len(time_s)] &= time_s >= counted_after_s
    with torch.no_grad():
        prediction, _ = network(torch.from_numpy(x))
    error = (prediction.numpy() - y)[mask]
    return float(100.0 * np.sqrt(np.mean(error.astype(np.float64) ** 2)))


def validate(network: SocNetwork, val: SequenceSet, settings: ScenarioSettings) -> dict[str, float]:
    """Validation RMSEs (percent) from the first sample and after a cold start; ``score`` = mean."""
    was_training = network.training
    network.eval()
    from_start = _rmse_pct(network, val)
    cold = _rmse_pct(network, val.tail(settings.start_fraction), settings.convergence_s)
    network.train(was_training)
    return {"from_start_rmse_pct": from_start, "cold_start_rmse_pct": cold,
            "score": 0.5 * (from_start + cold)}


def fit(
    network: SocNetwork,
    train: list[Cycle] | SequenceSet,
    val: list[Cycle] | SequenceSet,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    settings: ScenarioSettings | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``network`` in place; on return it holds the best weights seen on validation.

    The network's normalisation must already be set (:meth:`SocNetwork.set_normalisation`).
    ``on_step`` receives ``{"step", "total_steps", "epoch", "loss", "val_rmse_pct"}`` after
    every batch (for progress bars). ``resume`` continues from ``checkpoint_dir``.

    Fine-tuning (e.g. a projected network) is the same call with a config of few epochs
    and a lower learning rate; ``initial_validation`` is then the score before, and the
    weights kept are never worse on validation than those given (epoch 0 counts).
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(network, train, val, config, checkpoint_dir, resume,
                    settings or ScenarioSettings(), on_step)
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    network: SocNetwork,
    train: list[Cycle] | SequenceSet,
    val: list[Cycle] | SequenceSet,
    config: TrainConfig,
    checkpoint_dir: Path | None,
    resume: bool,
    settings: ScenarioSettings,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> FitResult:
    started = time.monotonic()
    train = train if isinstance(train, SequenceSet) else SequenceSet.from_cycles(train)
    val = val if isinstance(val, SequenceSet) else SequenceSet.from_cycles(val)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("training needs cycles in both the train and the val split",
                          remedy="re-split the dataset so that val holds at least one cycle")
    windows = max(config.batch_size, windows_to_cover(train, config.window,
                                                      config.samples_per_epoch))
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    checkpoint = Checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(network.state_dict())
    average = WeightAverage(network, config.average_decay) if config.average_decay else None
    initial = validate(network, val, settings)
    best: dict[str, Any] = {"epoch": 0, "validation": initial}
    start_epoch, bad_epochs = 0, 0
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise ModelFileError(f"no checkpoint to resume from in {checkpoint_dir}",
                                 remedy="train without --resume first")
        best_state, saved, averaged = checkpoint.load(network, optimizer, config.to_json(),
                                                      lambda c: TrainConfig.from_json(c).to_json())
        if average is not None:
            average.weights, average.steps = averaged, saved["average_steps"]
        history, best, bad_epochs = saved["history"], saved["best"], saved["bad_epochs"]
        initial = saved["initial_validation"]
        start_epoch = saved["next_epoch"]
    stopped = "epochs done"
    last_val = history[-1]["val"]["score"] if history else float("nan")
    steps_done = sum(row["batches"] for row in history)
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            stopped = f"early stopping: no improvement for {config.patience} epochs"
            break
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        x, y, mask = sample_windows(train, config.window, windows, rng)
        lanes = Lanes.lay_out(window_extents(mask), config.batch_size, config.chunk_length,
                              config.window.warmup, rng)
        # its own stream: augmenting changes no window and no batch, so ablations compare alike
        x = config.augmentation.apply(x, np.random.default_rng([config.seed, epoch, 1]))
        network.train()
        losses: list[float] = []
        out_of_time = False
        state: list[LstmState] | None = None
        for step in range(lanes.steps):
            progress = training_progress((epoch + step / lanes.steps) / config.epochs,
                                         time.monotonic() - started, config.max_minutes)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(progress, config)
            xb, yb, mb, starts = lanes.batch(step, x, y, mask)
            if state is not None:  # lanes starting a window start from a zero state
                keep = torch.from_numpy(~starts).float()[:, None]
                state = [(h * keep, c * keep) for h, c in state]
            prediction, final = network(torch.from_numpy(xb), state)
            target, in_loss = torch.from_numpy(yb), torch.from_numpy(mb)
            loss = _masked_mse(prediction, target, in_loss)
            objective = loss
            if config.coulomb_weight:
                objective = objective + config.coulomb_weight * coulomb_consistency(
                    prediction, target, in_loss, config.coulomb_lag)
            optimizer.zero_grad(set_to_none=True)
            if mb.any():  # a chunk inside every window's warm-up teaches nothing
                objective.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
                optimizer.step()
                if average is not None:
                    average.update(network)
            state = [(h.detach(), c.detach()) for h, c in final]
            losses.append(loss.item())
            steps_done += 1
            if on_step is not None:
                on_step({"step": steps_done, "total_steps": config.epochs * lanes.steps,
                         "epoch": epoch + 1, "loss": losses[-1], "val_rmse_pct": last_val})
            elapsed = time.monotonic() - started
            if config.max_minutes is not None and elapsed > 60 * config.max_minutes:
                out_of_time = True
                break
        with average.applied(network) if average is not None else nullcontext():
            validation = validate(network, val, settings)
            improved = validation["score"] < best["validation"]["score"]
            if improved:
                best_state = copy.deepcopy(network.state_dict())
        last_val = validation["score"]
        history.append({"epoch": epoch + 1, "train_rmse_pct": 100 * math.sqrt(np.mean(losses)),
                        "val": validation, "lr": optimizer.param_groups[0]["lr"],
                        "batches": len(losses), "seconds": round(time.monotonic() - started, 1)})
        if improved:
            best = {"epoch": epoch + 1, "validation": validation}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if checkpoint is not None:
            checkpoint.save(network, best_state, optimizer, {
                "config": config.to_json(), "architecture": network.architecture(),
                "next_epoch": epoch + 1, "history": history, "best": best,
                "initial_validation": initial,
                "bad_epochs": bad_epochs,
                "average_steps": average.steps if average is not None else 0,
            }, average.weights if average is not None else {})
        if out_of_time:
            stopped = f"time budget of {config.max_minutes:g} min reached"
            break
    network.load_state_dict(best_state)
    network.eval()
    return FitResult(history, initial, best["epoch"], best["validation"], stopped,
                     round(time.monotonic() - started, 1))


def with_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """``config`` with the given fields replaced; ``None`` values leave a field as it is."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def new_network(network_config: NetworkConfig, train: list[Cycle], seed: int,
                chrono_max_steps: int | None = None) -> SocNetwork:
    """A freshly initialised network (seeded) with the train split's normalisation; with
    ``chrono_max_steps``, its LSTM gate biases by chrono initialisation."""
    torch.manual_seed(seed)
    network = SocNetwork(network_config)
    if chrono_max_steps is not None:
        for name in network.lstm_names:
            network.get_submodule(name).chrono_initialise(chrono_max_steps)
    stats = Normalisation.fit(train)
    network.set_normalisation(np.array(stats.mean), np.array(stats.std))
    return network


def train_model(
    data: Dataset,
    *,
    profile: TrainingProfile,
    epochs: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_from: Path | None = None,
    name: str = "lstm",
    command: str = "",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[LstmSocEstimator, FitResult]:
    """Train a network of ``profile`` on ``data``'s train split; early-stop on its val split.

    ``epochs``, ``max_minutes``, ``seed`` and ``threads`` override the profile's training.

    The network is new, or with ``init_from`` a copy of a trained model's (pretraining on
    bsoc's simulated cells, then training on a user's few real cycles): its weights and
    its input normalisation, which those weights were learnt with, are kept as the start.
    Returns the estimator (not yet saved) whose metadata records data name and fingerprint,
    seed, profile, training config and history, validation metrics, the initial model and
    ``command``.
    """
    from bsoc.evaluate import evaluate
    from bsoc.nn.estimator import LstmSocEstimator

    config = with_overrides(profile.train, epochs=epochs, max_minutes=max_minutes, seed=seed,
                            threads=threads)
    train, val = data.split("train"), data.split("val")
    network = new_network(profile.network, train, seed, config.chrono_max_steps)
    pretrained: dict[str, Any] | None = None
    if init_from is not None:
        start = LstmSocEstimator.load(init_from)
        if start.network.architecture() != network.architecture():
            raise ConfigError(
                f"{init_from} is not a {profile.name}-profile network "
                f"({start.network.config.hidden_sizes} hidden units, kind {start.kind})",
                remedy=f"pretrain with the same --profile {profile.name}, or drop --init-from",
            )
        network = start.network
        pretrained = {"path": str(init_from), "name": start.name, "kind": start.kind,
                      "data": start.metadata.get("data", {})}
    result = fit(network, train, val, config, checkpoint_dir=checkpoint_dir, resume=resume,
                 on_step=on_step)
    estimator = LstmSocEstimator(network, name=name)
    validation = evaluate(estimator, val, scenarios=("from_start", "cold_start"))
    estimator.metadata = {
        "data": {"name": data.name, "fingerprint": data.fingerprint(),
                 "train_cycles": [c.meta.name for c in train],
                 "val_cycles": [c.meta.name for c in val]},
        "seed": seed,
        "training": {"profile": profile.name, "config": config.to_json(), **result.to_json()},
        "validation": validation,
        "learnables_table": network.learnables_table(),
        "initialised_from": pretrained,
        "command": command,
    }
    return estimator, result
