"""Training windows, normalisation, the fit loop (determinism, resume), the train/evaluate CLI."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bsoc.cli import main
from bsoc.data.augment import SensorAugmentation
from bsoc.data.dataset import Dataset
from bsoc.data.windows import (
    Lanes,
    Normalisation,
    SequenceSet,
    WindowPlan,
    sample_windows,
    windows_to_cover,
)
from bsoc.errors import ConfigError
from bsoc.evaluate import ScenarioSettings
from bsoc.profiles import PROFILES
from bsoc.train import (
    TrainConfig,
    coulomb_consistency,
    fit,
    learning_rate_at,
    new_network,
    training_progress,
)


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


def _coverage(plan: WindowPlan, total: int, windows: int) -> np.ndarray:
    """How often each sample of one ``total``-sample cycle is counted in random windows."""
    ramp = np.arange(total, dtype=np.float32)
    data = SequenceSet([np.stack([ramp] * 3, axis=1)], [ramp / total], [ramp.astype(float)],
                       ["ramp"])
    x, _, mask = sample_windows(data, plan, windows, np.random.default_rng(3))
    counted = np.zeros(total)
    np.add.at(counted, x[:, :, 0][mask].astype(int), 1)  # feature = the sample's index
    return counted


def test_covering_the_ends_counts_a_cycle_s_last_samples_as_often_as_its_middle() -> None:
    inside = WindowPlan(length=50, warmup=10, from_start_fraction=0.0)
    covering = WindowPlan(length=50, warmup=10, from_start_fraction=0.0, cover_ends=True)
    middle, last = slice(150, 250), slice(390, 400)
    before, after = _coverage(inside, 400, 20_000), _coverage(covering, 400, 20_000)
    assert before[last].mean() < 0.2 * before[middle].mean()
    assert 0.85 < after[last].mean() / after[middle].mean() < 1.15
    assert (after[:10] == 0).all()  # a random window's warm-up is never counted


def test_short_cycles_are_padded_and_masked(toy: Dataset) -> None:
    data = SequenceSet.from_cycles(toy.split("train"))
    plan = WindowPlan(length=int(data.lengths.max()) + 40, warmup=0, from_start_fraction=1.0)
    _, y, mask = sample_windows(data, plan, 5, np.random.default_rng(1))
    assert (mask.sum(axis=1) <= data.lengths.max()).all()
    assert (y[~mask] == 0).all()


def test_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    config = TrainConfig(learning_rate=1e-2, min_lr_fraction=0.1, warmup_fraction=0.1)
    rates = [learning_rate_at(training_progress((step + 1) / 100, 0.0, None), config)
             for step in range(100)]
    assert 0 < rates[0] < rates[5] < rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1e-3)


def test_a_time_budget_advances_the_schedule_when_it_runs_out_before_the_steps() -> None:
    assert training_progress(0.1, 30.0, max_minutes=1.0) == pytest.approx(0.5)
    assert training_progress(0.9, 30.0, max_minutes=1.0) == pytest.approx(0.9)
    assert training_progress(0.1, 90.0, max_minutes=1.0) == 1.0
    assert training_progress(0.1, 1e6, max_minutes=None) == pytest.approx(0.1)


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


@pytest.mark.parametrize("average_decay", [0.0, 0.9])
def test_interrupted_then_resumed_training_equals_an_uninterrupted_run(
    toy: Dataset, tmp_path: Path, average_decay: float
) -> None:
    train, val = toy.split("train"), toy.split("val")
    config = replace(_tiny(3), average_decay=average_decay)
    straight = new_network(PROFILES["tiny"].network, train, seed=3)
    fit(straight, train, val, config)

    interrupted = new_network(PROFILES["tiny"].network, train, seed=3)
    steps_per_epoch = config.samples_per_epoch // config.window.length // config.batch_size

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
    cold = report["scenarios"]["cold_start"]
    assert {"reacquisition_s", "convergence_s"} <= set(cold["by_condition"][0])

    code, out, _ = _run(["evaluate", str(model), str(toy_dataset), "--out",
                         str(tmp_path / "eval-table")], capsys)
    assert code == 0 and out.count("[s]") == 2  # units, not rich markup swallowed


def test_state_carried_across_chunks_equals_one_long_forward_pass(toy: Dataset) -> None:
    network = new_network(PROFILES["tiny"].network, toy.split("train"), seed=5).eval()
    x = torch.from_numpy(SequenceSet.from_cycles(toy.split("train")).padded()[0][:3, :300])
    whole, final = network(x)
    state, pieces = None, []
    for start in range(0, 300, 70):  # unequal last chunk on purpose
        out, state = network(x[:, start : start + 70], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-6, rtol=1e-5)
    for (h, c), (h_ref, c_ref) in zip(state, final):
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c, c_ref, atol=1e-6, rtol=1e-5)


def test_a_chunk_gradient_is_the_long_sequence_gradient_of_that_chunk_loss(toy: Dataset) -> None:
    """Truncation only cuts the path back through the carried state: the first chunk's
    loss has the same gradient as in the whole sequence (causality), and a later chunk's
    loss with the carried state detached is the whole pass's with the state cut there."""
    network = new_network(PROFILES["tiny"].network, toy.split("train"), seed=6).eval()
    x = torch.from_numpy(SequenceSet.from_cycles(toy.split("train")).padded()[0][:2, :120])
    target = torch.full((2, 120), 0.5)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        network.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in network.parameters()]

    whole, _ = network(x)
    reference = grads(((whole[:, :40] - target[:, :40]) ** 2).mean())
    first, state = network(x[:, :40])
    chunked = grads(((first - target[:, :40]) ** 2).mean())
    for a, b in zip(chunked, reference):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)

    with torch.no_grad():
        _, state = network(x[:, :40])
    second, _ = network(x[:, 40:], [(h.detach(), c.detach()) for h, c in state])
    cut = grads(((second - target[:, 40:]) ** 2).mean())
    with torch.no_grad():
        _, carried = network(x[:, :40])
    again, _ = network(x[:, 40:], carried)
    for a, b in zip(cut, grads(((again - target[:, 40:]) ** 2).mean())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in cut)


def test_weight_average_is_the_debiased_moving_average_of_the_steps(toy: Dataset) -> None:
    from bsoc.weight_average import WeightAverage

    network = new_network(PROFILES["tiny"].network, toy.split("train"), seed=0)
    name, first = next(iter(network.named_parameters()))
    average = WeightAverage(network, decay=0.9)
    expected = first.detach().double().clone()
    for step in range(1, 40):
        with torch.no_grad():
            for p in network.parameters():
                p.add_(0.01 * step)
        average.update(network)
        keep = min(0.9, (1 + step) / (10 + step))
        expected = keep * expected + (1 - keep) * first.detach().double()
    assert average.decay_at(1) == 2 / 11 and average.decay_at(100) == 0.9
    torch.testing.assert_close(average.weights[name].double(), expected, atol=1e-6, rtol=1e-6)
    own = copy.deepcopy(network.state_dict())
    with average.applied(network):
        torch.testing.assert_close(dict(network.named_parameters())[name].detach(),
                                   average.weights[name], atol=0, rtol=0)  # fmt: skip
    for key, value in own.items():  # its own weights back, buffers never averaged
        torch.testing.assert_close(network.state_dict()[key], value, atol=0, rtol=0)


def test_training_with_a_weight_average_judges_and_keeps_the_average(
    toy: Dataset, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from bsoc.train import validate

    train, val = toy.split("train"), toy.split("val")
    config = replace(_tiny(2), average_decay=0.8, learning_rate=1e-2)
    network = new_network(PROFILES["tiny"].network, train, seed=5)
    result = fit(network, train, val, config, checkpoint_dir=tmp_path)
    assert result.best_epoch == 2  # both epochs improved on the toy data at this rate
    saved = load_file(str(tmp_path / "checkpoint.safetensors"))
    for name, p in network.named_parameters():  # kept: the average, not the last step
        torch.testing.assert_close(p.detach(), saved[f"average.{name}"], atol=0, rtol=0)
    assert any(not torch.equal(saved[f"average.{n}"], saved[f"model.{n}"])
               for n, _ in network.named_parameters())  # fmt: skip
    assert validate(network, SequenceSet.from_cycles(val), ScenarioSettings()) == (
        result.best_validation)
    with pytest.raises(ConfigError, match="decay"):
        replace(config, average_decay=1.0)


def test_chunked_training_steps_once_per_chunk_and_resumes_identically(
    toy: Dataset, tmp_path: Path
) -> None:
    train, val = toy.split("train"), toy.split("val")
    config = replace(_tiny(2), window=WindowPlan(length=200, warmup=20), chunk=50,
                     samples_per_epoch=16 * 200)
    steps: list[int] = []
    straight = new_network(PROFILES["tiny"].network, train, seed=2)
    result = fit(straight, train, val, config, on_step=lambda info: steps.append(info["step"]))
    # 16 windows of 200 samples (toy cycles are longer) in batches of 8: 2 x 4 chunks an epoch
    assert [row["batches"] for row in result.history] == [8, 8] and steps == list(range(1, 17))

    def stop_in_epoch_2(info: dict) -> None:
        if info["step"] == 11:
            raise KeyboardInterrupt

    interrupted = new_network(PROFILES["tiny"].network, train, seed=2)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, val, config, checkpoint_dir=tmp_path, on_step=stop_in_epoch_2)
    resumed = new_network(PROFILES["tiny"].network, train, seed=77)
    fit(resumed, train, val, config, checkpoint_dir=tmp_path, resume=True)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0)


def test_augmentation_changes_the_inputs_and_never_the_targets(
    toy: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bsoc.train as train_module

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_loss = train_module._masked_mse
    monkeypatch.setattr(train_module, "_masked_mse", lambda p, y, m: (
        seen.append((y.clone(), m.clone())), original_loss(p, y, m))[1])
    inputs: list[torch.Tensor] = []

    def run(augmentation: SensorAugmentation) -> tuple[list, list]:
        seen.clear()
        inputs.clear()
        train = toy.split("train")
        network = new_network(PROFILES["tiny"].network, train, seed=1)
        network.register_forward_pre_hook(
            lambda module, args: inputs.append(args[0].clone()) if module.training else None)
        fit(network, train, toy.split("val"), replace(_tiny(1), augmentation=augmentation))
        return list(seen), list(inputs)

    clean_targets, clean_inputs = run(SensorAugmentation())
    noisy = SensorAugmentation(voltage_offset_v=0.004, current_offset_a=0.11,
                               temperature_offset_c=5.0, voltage_noise_v=0.002)
    noisy_targets, noisy_inputs = run(noisy)
    assert len(clean_targets) == len(noisy_targets) > 0
    for (y, m), (y_aug, m_aug) in zip(clean_targets, noisy_targets):
        assert torch.equal(y, y_aug) and torch.equal(m, m_aug)
    differences = [b - a for a, b in zip(clean_inputs, noisy_inputs)]
    assert all(d.abs().max() > 0 for d in differences)
    current_shift = torch.cat([d[..., 1] for d in differences])
    temperature_shift = torch.cat([d[..., 2] for d in differences])
    assert current_shift.abs().max() <= 0.11 + 1e-5 and temperature_shift.abs().max() <= 5 + 1e-5
    # offsets are one per window: constant along time (no noise on I and T here)
    assert torch.allclose(current_shift, current_shift[:, :1].expand_as(current_shift), atol=1e-5)


def test_augmentation_rejects_negative_amplitudes() -> None:
    with pytest.raises(Exception, match=">= 0"):
        SensorAugmentation(current_noise_a=-0.1)


def test_windows_weight_cycles_by_the_samples_one_window_takes() -> None:
    lengths = [100, 200, 400, 1000]
    data = SequenceSet(features=[np.zeros((n, 3), np.float32) for n in lengths],
                       soc=[np.full(n, 0.5, np.float32) for n in lengths],
                       time_s=[np.arange(n, dtype=np.float64) for n in lengths],
                       names=[f"c{n}" for n in lengths])
    plan = WindowPlan(length=300, warmup=0, from_start_fraction=1.0)
    # one window takes 100, 200, 300, 300 samples: mean window (sum w^2 / sum w) 255.6
    assert windows_to_cover(data, plan) == 1700 // (230_000 / 900)
    _, _, mask = sample_windows(data, plan, 9000, np.random.default_rng(0))
    counted = mask.sum(axis=1)
    shares = [np.mean(counted == n) for n in (100, 200, 300)]
    np.testing.assert_allclose(shares, [1 / 9, 2 / 9, 6 / 9], atol=0.015)


def test_training_can_start_from_a_pretrained_model(toy: Dataset, tmp_path: Path) -> None:
    from bsoc.train import train_model, validate

    pretrained, _ = train_model(toy, profile=PROFILES["tiny"], seed=1)
    pretrained.save(tmp_path / "pretrained")
    start_score = validate(pretrained.network, SequenceSet.from_cycles(toy.split("val")),
                           ScenarioSettings())["score"]
    tuned, result = train_model(toy, profile=PROFILES["tiny"], seed=2, epochs=1,
                                init_from=tmp_path / "pretrained")
    assert result.initial_validation["score"] == pytest.approx(start_score, rel=1e-6)
    assert tuned.metadata["initialised_from"]["path"] == str(tmp_path / "pretrained")
    torch.testing.assert_close(tuned.network.input_mean, pretrained.network.input_mean)
    fresh, fresh_result = train_model(toy, profile=PROFILES["tiny"], seed=2, epochs=1)
    assert fresh.metadata["initialised_from"] is None
    assert fresh_result.initial_validation["score"] != pytest.approx(start_score, rel=1e-3)
    with pytest.raises(ConfigError, match="not a quick-profile network"):
        train_model(toy, profile=PROFILES["quick"], epochs=1, init_from=tmp_path / "pretrained")


def test_cli_trains_from_a_pretrained_model(
    toy_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "sim", tmp_path / "real"
    assert _run(["train", "--data", str(toy_dataset), "--out", str(first), "--profile", "tiny",
                 "--epochs", "1"], capsys)[0] == 0
    code, _, _ = _run(["train", "--data", str(toy_dataset), "--out", str(second), "--profile",
                       "tiny", "--epochs", "1", "--init-from", str(first)], capsys)
    assert code == 0
    config = json.loads((second / "config.json").read_text())
    assert config["initialised_from"]["path"] == str(first)
    assert "--init-from" in config["command"]
    code, _, err = _run(["train", "--data", str(toy_dataset), "--out", str(tmp_path / "x"),
                         "--profile", "quick", "--init-from", str(first)], capsys)
    assert code == 2 and "not a quick-profile network" in err and "Traceback" not in err


def test_a_recorded_config_of_windows_per_epoch_reads_as_samples() -> None:
    recorded = {**_tiny(2).to_json(), "windows_per_epoch": 10}
    recorded.pop("samples_per_epoch")
    recorded.pop("augmentation")
    recorded.pop("chunk")
    config = TrainConfig.from_json(recorded)
    assert config.samples_per_epoch == 10 * config.window.length
    assert not config.augmentation.enabled and config.chunk is None
    assert TrainConfig.from_json(_tiny(2).to_json()) == _tiny(2)


def test_lanes_run_every_chunk_of_every_window_once_in_order() -> None:
    extents = np.array([250, 100, 0, 420, 60, 180])
    lanes = Lanes.lay_out(extents, lanes=3, chunk=100, warmup=30, rng=np.random.default_rng(4))
    seen: dict[int, list[int]] = {}
    for b in range(lanes.window.shape[1]):
        column = [(w, k) for w, k in zip(lanes.window[:, b], lanes.offset[:, b]) if w >= 0]
        for w, k in column:
            seen.setdefault(int(w), []).append(int(k))
        # a window's chunks follow each other in a lane; only a lane's first chunk may
        # start inside a window (the lane's random phase), and only that one is a restart
        for (w0, k0), (w1, k1) in zip(column, column[1:]):
            assert (w1 == w0 and k1 == k0 + 1) or k1 == 0
        assert list(np.flatnonzero(lanes.restart[:, b])) == ([0] if column[0][1] > 0 else [])
    assert {w: sorted(ks) for w, ks in seen.items()} == {
        0: [0, 1, 2], 1: [0], 2: [0], 3: [0, 1, 2, 3, 4], 4: [0], 5: [0, 1]}
    assert lanes.steps == 5  # 13 chunks over 3 lanes, the 5-chunk window alone in one
    assert lanes.restart.any()  # seed 4 cuts into a window

    x = np.arange(6 * 420, dtype=np.float32).reshape(6, 420, 1)
    y = x[..., 0] / 1000
    mask = np.ones((6, 420), bool)
    for step in range(lanes.steps):
        xb, yb, mb, starts = lanes.batch(step, x, y, mask)
        assert xb.shape == (3, 100, 1) and yb.shape == mb.shape == (3, 100)
        for b, (w, k) in enumerate(zip(lanes.window[step], lanes.offset[step])):
            if w < 0:
                assert starts[b] and not xb[b].any() and not mb[b].any()
                continue
            piece = x[w, k * 100 : (k + 1) * 100]
            np.testing.assert_array_equal(xb[b, : len(piece)], piece)
            np.testing.assert_array_equal(yb[b, : len(piece)], y[w, k * 100 : (k + 1) * 100])
            assert starts[b] == (k == 0 or lanes.restart[step, b])
            counted_from = 30 if lanes.restart[step, b] else 0
            assert not mb[b, :counted_from].any() and mb[b, counted_from : len(piece)].all()


def test_coulomb_consistency_ignores_a_constant_error_and_counts_a_moving_one() -> None:
    target = (1.0 - torch.arange(40) / 128).repeat(2, 1)  # exact in binary: equalities hold
    mask = torch.ones(2, 40, dtype=torch.bool)
    assert coulomb_consistency(target - 0.25, target, mask, lag=5).item() == 0.0
    jitter = (-1.0) ** torch.arange(40) / 64  # flips sign every sample: moves 1/32 a step
    assert coulomb_consistency(target + jitter, target, mask, lag=1).item() == 1 / 32**2
    assert coulomb_consistency(target + jitter, target, mask, lag=2).item() == 0.0
    mask[:, 10:] = False  # pairs with an end outside the mask do not count
    moved = target.clone()
    moved[:, 10:] -= 0.25
    assert coulomb_consistency(moved, target, mask, lag=1).item() == 0.0


def test_the_coulomb_term_changes_training_only_when_weighted(toy: Dataset) -> None:
    train, val = toy.split("train"), toy.split("val")
    trained = {}
    for weight in (0.0, 5.0):
        network = new_network(PROFILES["tiny"].network, train, seed=1)
        fit(network, train, val, replace(_tiny(1), coulomb_weight=weight))
        trained[weight] = network.state_dict()
    plain = new_network(PROFILES["tiny"].network, train, seed=1)
    fit(plain, train, val, _tiny(1))
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(trained[0.0][key], value, atol=0, rtol=0)
    assert any(not torch.equal(trained[5.0][k], v) for k, v in plain.state_dict().items())
    with pytest.raises(ConfigError, match="coulomb"):
        TrainConfig(coulomb_lag=0)


def test_chrono_initialisation_spreads_the_forget_gates_and_touches_nothing_else(
    toy: Dataset,
) -> None:
    train = toy.split("train")
    plain = new_network(PROFILES["tiny"].network, train, seed=4)
    chrono = new_network(PROFILES["tiny"].network, train, seed=4, chrono_max_steps=1000)
    for name in plain.lstm_names:
        before, after = plain.get_submodule(name), chrono.get_submodule(name)
        hidden = after.hidden_size
        bias = after.bias.detach()
        forget, input_gate = bias[hidden : 2 * hidden], bias[:hidden]
        torch.testing.assert_close(input_gate, -forget, rtol=0, atol=0)
        assert float(forget.min()) >= 0.0 and float(forget.max()) <= np.log(1000.0) + 1e-6
        # memories 1 + e^b spread over every decade up to a thousand steps, not the few
        # steps of PyTorch's init
        decades = np.histogram(forget.numpy(), bins=3, range=(0.0, np.log(1000.0)))[0]
        assert (decades > 0).all()
        assert float(before.bias.detach()[hidden : 2 * hidden].abs().max()) < 1.0
        torch.testing.assert_close(bias[2 * hidden :], before.bias.detach()[2 * hidden :],
                                   rtol=0, atol=0)
        torch.testing.assert_close(after.input_weights, before.input_weights, rtol=0, atol=0)
        torch.testing.assert_close(after.recurrent_weights, before.recurrent_weights,
                                   rtol=0, atol=0)


def test_chrono_initialisation_is_recorded_and_checked() -> None:
    config = TrainConfig(chrono_max_steps=10_000)
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert TrainConfig.from_json({**TrainConfig().to_json()}).chrono_max_steps is None
    with pytest.raises(ConfigError, match="chrono_max_steps"):
        TrainConfig(chrono_max_steps=2)
