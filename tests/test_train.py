"""Training windows, normalisation, the fit loop (determinism, resume), the train/evaluate CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bsoc.cli import main
from bsoc.data.dataset import Dataset
from bsoc.data.windows import Normalisation, SequenceSet, WindowPlan, sample_windows
from bsoc.train import (PROFILES, TrainConfig, fit, learning_rate_at, new_network,
                        training_progress)


@pytest.fixture(scope="module")
def toy(toy_dataset: Path) -> Dataset:
    return Dataset.load(toy_dataset)


def test_normalisation_uses_train_statistics_and_tolerates_constant_features(
    toy: Dataset,
) -> None:
    train = toy.split("train")
    stats = Normalisation.fit(train)
    features = np.concatenate([c.features().astype(np.float64) for c in train])
    np.testing.assert_allclose(stats.mean, features.mean(axis=0))
    np.testing.assert_allclose(stats.std, features.std(axis=0))
    constant = train[0].frame.assign(temperature_c=25.0)
    single = Normalisation.fit([type(train[0])(constant, train[0].meta)])
    assert single.std[2] == 1.0 and single.mean[2] == 25.0


def test_windows_start_anywhere_or_at_the_start_with_the_right_mask(toy: Dataset) -> None:
    data = SequenceSet.from_cycles(toy.split("train"))
    plan = WindowPlan(length=50, warmup=10, from_start_fraction=0.5)
    x, y, mask = sample_windows(data, plan, 200, np.random.default_rng(0))
    assert x.shape == (200, 50, 3) and y.shape == mask.shape == (200, 50)
    at_start = mask[:, 0]
    assert 0.3 < at_start.mean() < 0.7
    assert mask[at_start].all()  # start windows count from the first sample
    assert not mask[~at_start, :10].any() and mask[~at_start, 10:].all()
    for n in range(200):  # every window is a verbatim slice of one cycle
        hits = [
            (c, s)
            for c, soc in enumerate(data.soc)
            for s in np.flatnonzero(np.isclose(data.features[c][:, 0], x[n, 0, 0]))
            if s + 50 <= len(soc) and np.array_equal(soc[s : s + 50], y[n])
        ]
        assert hits, f"window {n} is not a slice of a cycle"
        assert not at_start[n] or any(s == 0 for _, s in hits)


def test_short_cycles_are_padded_and_masked(toy: Dataset) -> None:
    data = SequenceSet.from_cycles(toy.split("train"))
    plan = WindowPlan(length=int(data.lengths.max()) + 40, warmup=0, from_start_fraction=1.0)
    _, y, mask = sample_windows(data, plan, 5, np.random.default_rng(1))
    assert (mask.sum(axis=1) <= data.lengths.max()).all()
    assert (y[~mask] == 0).all()


def test_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    config = TrainConfig(learning_rate=1e-2, min_lr_fraction=0.1, warmup_fraction=0.1)
    rates = [learning_rate_at(training_progress(step, 100, 0.0, None), config)
             for step in range(100)]
    assert 0 < rates[0] < rates[5] < rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1e-3)


def test_a_time_budget_advances_the_schedule_when_it_runs_out_before_the_steps() -> None:
    assert training_progress(9, 100, 30.0, max_minutes=1.0) == pytest.approx(0.5)
    assert training_progress(89, 100, 30.0, max_minutes=1.0) == pytest.approx(0.9)
    assert training_progress(9, 100, 90.0, max_minutes=1.0) == 1.0
    assert training_progress(9, 100, 1e6, max_minutes=None) == pytest.approx(0.1)


def _tiny(epochs: int) -> TrainConfig:
    return replace(PROFILES["tiny"].train, epochs=epochs, patience=epochs)


def test_fit_improves_validation_and_keeps_the_best_epoch(toy: Dataset) -> None:
    train, val = toy.split("train"), toy.split("val")
    network = new_network(PROFILES["tiny"].network, train, seed=0)
    result = fit(network, train, val, replace(_tiny(6), learning_rate=1e-2))
    scores = [row["val"]["score"] for row in result.history]
    assert len(scores) == 6
    assert min(scores) < scores[0]
    assert result.best_validation["score"] == min(scores)
    assert result.history[result.best_epoch - 1]["val"]["score"] == min(scores)


def test_interrupted_then_resumed_training_equals_an_uninterrupted_run(
    toy: Dataset, tmp_path: Path
) -> None:
    train, val = toy.split("train"), toy.split("val")
    config = _tiny(3)
    straight = new_network(PROFILES["tiny"].network, train, seed=3)
    fit(straight, train, val, config)

    interrupted = new_network(PROFILES["tiny"].network, train, seed=3)
    steps_per_epoch = config.windows_per_epoch // config.batch_size

    def stop_in_epoch_3(info: dict) -> None:
        if info["step"] == 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, val, config, checkpoint_dir=tmp_path, on_step=stop_in_epoch_3)
    resumed = new_network(PROFILES["tiny"].network, train, seed=99)  # weights come from the file
    result = fit(resumed, train, val, config, checkpoint_dir=tmp_path, resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0)
    with pytest.raises(Exception, match="other settings"):
        fit(resumed, train, val, replace(config, learning_rate=0.5), checkpoint_dir=tmp_path,
            resume=True)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code), captured.out, captured.err


def test_cli_trains_evaluates_and_refuses_to_overwrite(
    toy_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "models" / "tiny"
    code, out, _ = _run(["train", "--data", str(toy_dataset), "--out", str(model),
                         "--profile", "tiny", "--seed", "4", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["learnables"] == 2089 and summary["epochs_run"] == 3
    config = json.loads((model / "config.json").read_text())
    assert config["seed"] == 4 and config["data"]["fingerprint"] == Dataset.load(
        toy_dataset).fingerprint()
    assert config["training"]["profile"] == "tiny" and len(config["training"]["history"]) == 3
    assert config["validation"]["scenarios"]["cold_start"]["counted_after_s"] == 300.0
    assert "bsoc train" in config["command"] and config["bsoc_version"]
    assert not (model / "checkpoint").exists()

    code, _, err = _run(["train", "--data", str(toy_dataset), "--out", str(model),
                         "--profile", "tiny"], capsys)
    assert code == 2 and "--force" in err

    code, out, _ = _run(["evaluate", str(model), str(toy_dataset), "--out",
                         str(tmp_path / "eval"), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert set(report["scenarios"]) == {"from_start", "cold_start", "degraded_sensors"}
    assert report["rmse_pct"] == report["scenarios"]["from_start"]["rmse_pct"]
    assert {row["cycle"] for row in report["by_condition"]} == {"toy_8", "toy_9"}
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert (tmp_path / "eval" / "soc_per_cycle.png").stat().st_size > 1000
