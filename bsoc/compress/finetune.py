"""Fine-tuning a compressed (or any) SOC network: the training loop again, shorter and gentler.

Projection leaves the network close to the original; a few epochs at a lower learning
rate let the remaining weights re-adjust to the dropped eigen-neurons. Every learnable
trains, projectors included, with :func:`bsoc.train.fit` (same windows, validation and
early stopping as training). Because ``fit`` keeps the best validated weights and starts
from the compressed weights' own score, fine-tuning never returns a worse model on the
validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bsoc.compress.workflow import validation_metrics
from bsoc.data.dataset import Dataset
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.profiles import PROFILES
from bsoc.train import FitResult, TrainConfig, fit, with_overrides

FINETUNE_EPOCHS = 10
FINETUNE_LR_FRACTION = 0.1  # of the source model's training learning rate


def finetune_config(source: LstmSocEstimator, *, epochs: int | None = None,
                    learning_rate: float | None = None, max_minutes: float | None = None,
                    seed: int | None = None) -> TrainConfig:
    """The model's own training configuration (windows, batch), fewer epochs, lower rate."""
    recorded = source.metadata.get("training", {}).get("config")
    base = TrainConfig.from_json(recorded) if recorded else PROFILES["quick"].train
    tuned = with_overrides(
        base, epochs=epochs or FINETUNE_EPOCHS,
        learning_rate=learning_rate or FINETUNE_LR_FRACTION * base.learning_rate, seed=seed,
    )
    # the training run's time budget does not carry over
    return replace(tuned, max_minutes=max_minutes)


def finetune_model(
    model: Path, data: Dataset, out: Path, *, epochs: int | None = None,
    learning_rate: float | None = None, max_minutes: float | None = None, seed: int | None = None,
    command: str = "", force: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[LstmSocEstimator, FitResult, dict[str, Any]]:
    """Fine-tune the model folder ``model`` on ``data`` and write it to ``out`` (same kind).

    Returns the estimator, the fit result, and the record (validation RMSE before and after,
    config, history) that is also stored under ``"finetuning"`` in ``out/config.json``.
    """
    source = LstmSocEstimator.load(model)
    config = finetune_config(source, epochs=epochs, learning_rate=learning_rate,
                             max_minutes=max_minutes, seed=seed)
    network = source.network
    before = validation_metrics(network, data)
    result = fit(network, data.split("train"), data.split("val"), config, on_step=on_step)
    after = validation_metrics(network, data)
    record = {
        "source_model": {"path": str(model), "name": source.name, "kind": source.kind},
        "config": config.to_json(),
        "val_rmse_pct_before": before["rmse_pct"],
        "val_rmse_pct_after": after["rmse_pct"],
        "val_cold_start_rmse_pct_before": before["scenarios"]["cold_start"]["rmse_pct"],
        "val_cold_start_rmse_pct_after": after["scenarios"]["cold_start"]["rmse_pct"],
        "data": {"name": data.name, "fingerprint": data.fingerprint()},
        **result.to_json(),
    }
    estimator = LstmSocEstimator(network, kind=source.kind, name=out.name)
    estimator.metadata = {
        **source.metadata,
        "finetuning": record,
        "validation": after,
        "learnables_table": network.learnables_table(),
        "command": command,
    }
    estimator.save(out, force=force)
    return estimator, result, record
