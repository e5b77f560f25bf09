"""`bsoc compress / finetune / unpack` on a tiny trained model: model folders, records, sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bsoc.cli import main
from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code), captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_model(toy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("compress") / "tiny"
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", str(toy_dataset), "--out", str(model), "--profile", "tiny",
              "--seed", "1"])
    assert done.value.code == 0
    return model


def test_compress_then_finetune_records_everything(
    tiny_model: Path, toy_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    projected = tmp_path / "projected"
    code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(projected), "--learnables-reduction", "0.5", "--json"], capsys)
    assert code == 0, out
    summary = json.loads(out)
    assert summary["kind"] == "projected-lstm"
    assert summary["learnables_after"] <= 0.5 * summary["learnables_before"] == 0.5 * 2089
    config = json.loads((projected / "config.json").read_text())
    compression = config["compression"]
    assert compression["goal"] == {"learnables_reduction": 0.5}
    assert set(compression["explained_variance"]) == {
        "lstm_1.input", "lstm_1.output", "lstm_2.input", "lstm_2.output", "fc.input"}
    curve = compression["explained_variance"]["lstm_1.output"]
    assert len(curve["explained_variance_curve"]) == 16
    assert curve["rank"] == compression["ranks"]["lstm_1"][1]
    assert compression["layers"]["lstm_1"]["explained_variance_kept"]["output"] == pytest.approx(
        curve["explained_variance_curve"][curve["rank"] - 1], abs=1e-6)
    assert "bsoc compress" in config["command"] and config["validation"]["rmse_pct"] > 0
    assert config["data"]["fingerprint"] == Dataset.load(toy_dataset).fingerprint()

    tuned = tmp_path / "tuned"
    code, out, _ = _run(["finetune", str(projected), "--data", str(toy_dataset), "--out",
                         str(tuned), "--epochs", "2", "--json"], capsys)
    assert code == 0, out
    result = json.loads(out)
    assert result["val_rmse_pct_after"] <= result["val_rmse_pct_before"]
    tuned_config = json.loads((tuned / "config.json").read_text())
    assert tuned_config["kind"] == "projected-lstm"
    assert tuned_config["finetuning"]["config"]["learning_rate"] == pytest.approx(
        0.1 * config["training"]["config"]["learning_rate"])
    assert tuned_config["compression"]["ranks"] == compression["ranks"]
    assert load_estimator(tuned).learnables() == summary["learnables_after"]

    code, _, err = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(projected), "--explained-variance", "0.9"], capsys)
    assert code == 2 and "--force" in err
    code, _, err = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(tmp_path / "x"), "--explained-variance", "0.9", "--ranks",
                         "lstm_1=2,3"], capsys)
    assert code == 2 and "exactly one" in err
    code, _, err = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(tmp_path / "x"), "--ranks", "lstm_1=2,3", "--rank-multiple", "4"],
                        capsys)
    assert code == 2 and "explicit" in err and not (tmp_path / "x").exists()

    rounded = tmp_path / "rounded"
    code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(rounded), "--learnables-reduction", "0.5", "--rank-multiple", "4",
                         "--json"], capsys)
    assert code == 0, out
    goal = json.loads((rounded / "config.json").read_text())["compression"]["goal"]
    assert goal == {"learnables_reduction": 0.5, "rank_multiple": 4}
    assert all(rank % 4 == 0 or rank == 3  # lstm_1's input: all of its 3 features
               for ranks in json.loads(out)["ranks"].values() for rank in ranks)


def test_svd_baseline_matches_projection_learnables_and_unpack_keeps_outputs(
    tiny_model: Path, toy_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = {}
    for method in ("projection", "svd"):
        code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                             str(tmp_path / method), "--explained-variance", "0.95", "--method",
                             method, "--layers", "lstm_1,lstm_2", "--json"], capsys)
        assert code == 0, out
        outputs[method] = json.loads(out)
    assert outputs["svd"]["kind"] == "svd-lstm"
    assert outputs["svd"]["ranks"] == outputs["projection"]["ranks"]
    assert outputs["svd"]["learnables_after"] == outputs["projection"]["learnables_after"]

    code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(tmp_path / "table"), "--ranks", "lstm_1=3,4", "--ranks", "lstm_2=4,3",
                         "--json"], capsys)
    assert code == 0 and json.loads(out)["ranks"] == {"lstm_1": [3, 4], "lstm_2": [4, 3]}

    code, out, _ = _run(["unpack", str(tmp_path / "projection"), "--out", str(tmp_path / "plain"),
                         "--json"], capsys)
    assert code == 0 and json.loads(out)["learnables"] == 2089
    samples = Dataset.load(toy_dataset).split("test")[0].samples()
    np.testing.assert_allclose(load_estimator(tmp_path / "plain").predict(samples),
                               load_estimator(tmp_path / "projection").predict(samples), atol=1e-6)


def test_analyze_and_sweep_write_their_files(
    tiny_model: Path, toy_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(tmp_path / "analysis"), "--analyze", "--json"], capsys)
    assert code == 0, out
    analysis = json.loads(out)
    lstm_1 = next(row for row in analysis["layers"] if row["layer"] == "lstm_1")
    assert lstm_1["neurons"] == {"input": 3, "output": 16}
    ranks = [lstm_1["levels"][str(level)]["ranks"]["output"] for level in (0.9, 0.95, 0.99, 0.999)]
    assert ranks == sorted(ranks) and 1 <= ranks[0] and ranks[-1] <= 16
    assert (tmp_path / "analysis" / "explained_variance.png").stat().st_size > 1000

    code, out, _ = _run(["compress", str(tiny_model), "--data", str(toy_dataset), "--out",
                         str(tmp_path / "sweep"), "--sweep", "--json"], capsys)
    assert code == 0, out
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert set(sweep) == {"projection", "svd"} and len(sweep["projection"]) >= 2
    for a, b in zip(sweep["projection"], sweep["svd"], strict=True):
        assert a["learnables"] == b["learnables"] and isinstance(a["learnables"], int)
        assert a["rmse_pct"] > 0 and b["rmse_pct"] > 0 and "goal" in a
    meta = json.loads((tmp_path / "sweep" / "sweep.meta.json").read_text())
    assert "bsoc compress" in meta["command"]
