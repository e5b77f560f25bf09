"""int8 weight quantisation: the arithmetic, every LSTM kind, bytes, model folders, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from edge_models import KINDS, cycle_samples, float_estimator, run_cli
from safetensors import safe_open
from stream_set import StreamSet

from bsoc.compress.quantize import Int8Map, quantize_factor, quantize_network
from bsoc.errors import ModelFileError
from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator


def _int8(kind: str) -> tuple[LstmSocEstimator, LstmSocEstimator]:
    source = float_estimator(kind)
    return source, LstmSocEstimator(quantize_network(source.network), kind=f"{kind}-int8")


def test_factor_quantisation_is_symmetric_per_output_channel() -> None:
    torch.manual_seed(0)
    factor = torch.randn(40, 6) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 3.0, 0.0])
    values, scales = quantize_factor(factor)
    assert values.dtype == torch.int8 and scales.dtype == torch.float32
    assert values.shape == (40, 6) and scales.shape == (6,)
    peaks = factor.abs().amax(dim=0)
    torch.testing.assert_close(scales[:5], peaks[:5] / 127, rtol=0, atol=0)
    assert scales[5] == 1.0 and not values[:, 5].any()  # an all-zero column stays zero
    assert values[:, :5].abs().amax(dim=0).tolist() == [127] * 5  # full range per column
    dequantised = values.float() * scales
    assert ((dequantised - factor).abs() <= scales / 2 * (1 + 1e-6)).all()  # rounding: half a step


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_quantises_every_factor(kind: str, toy_dataset: Path) -> None:
    source, quantized = _int8(kind)
    float_maps = source.network.weight_maps()
    for address, layer_map in quantized.network.weight_maps().items():
        assert isinstance(layer_map, Int8Map)
        assert layer_map.source == float_maps[address].spec()
        assert len(layer_map.factors()) == len(float_maps[address].factors())
        for (values, scales), dequantised in zip(layer_map.int8_factors(), layer_map.factors(),
                                                  strict=True):
            assert torch.equal(dequantised, values.float() * scales)
    assert quantized.learnables() == source.learnables()
    assert quantized.macs_per_sample() == source.macs_per_sample()
    # bytes: one per int8 weight, four per scale (one per factor column) and per bias
    factors = [f for m in float_maps.values() for f in m.factors()]
    biases = sum(layer.bias.numel() for layer in source.network.learnable_layers().values())
    assert quantized.weight_bytes() == sum(f.numel() + 4 * f.shape[1] for f in factors) + 4 * biases
    assert source.weight_bytes() == 4 * source.learnables()
    samples = cycle_samples(toy_dataset, 400)
    float_soc, int8_soc = source.predict(samples), quantized.predict(samples)
    assert 0 < np.abs(int8_soc - float_soc).max() < 0.05  # changed, and only a little


@pytest.mark.parametrize("kind", KINDS)
def test_int8_model_streams_as_it_predicts(kind: str, toy_dataset: Path) -> None:
    _, quantized = _int8(kind)
    samples = cycle_samples(toy_dataset)
    streams = StreamSet(quantized)
    streamed = np.array([streams.step(row) for row in samples])
    np.testing.assert_allclose(streamed, quantized.predict(samples), atol=1e-5, rtol=0)


def test_int8_model_folder_holds_int8_tensors_and_reloads_exactly(
    tmp_path: Path, toy_dataset: Path,
) -> None:
    _, quantized = _int8("projected-lstm")
    quantized.save(tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as tensors:
        dtypes = {key: tensors.get_tensor(key).dtype for key in tensors.keys()}  # noqa: SIM118
    assert dtypes["lstm_1.recurrent_map.values_0"] == torch.int8
    assert dtypes["lstm_1.recurrent_map.scales_0"] == torch.float32
    assert sum(d == torch.int8 for d in dtypes.values()) == 2 * 4 + 2  # 2 factors, 5 maps
    loaded = load_estimator(tmp_path / "q")
    assert loaded.kind == "projected-lstm-int8"
    assert loaded.weight_bytes() == quantized.weight_bytes()
    samples = cycle_samples(toy_dataset, 300)
    np.testing.assert_array_equal(loaded.predict(samples), quantized.predict(samples))


def test_quantising_twice_is_refused() -> None:
    _, quantized = _int8("lstm")
    with pytest.raises(ModelFileError, match="already quantised"):
        quantize_network(quantized.network)


def test_cli_quantize_records_bytes_and_accuracy(
    tmp_path: Path, toy_dataset: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    float_estimator("svd-lstm").save(tmp_path / "svd")
    code, out, err = run_cli(["quantize", str(tmp_path / "svd"), "--out", str(tmp_path / "q"),
                           "--data", str(toy_dataset), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kind"] == "svd-lstm-int8"
    assert summary["weight_bytes"] == (summary["int8_bytes"] + summary["scale_bytes"]
                                       + summary["float32_bias_bytes"])
    assert summary["weight_bytes"] < summary["weight_bytes_float32"]
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    record = config["quantization"]
    assert record["source_model"]["kind"] == "svd-lstm"
    assert record["val_rmse_pct_int8"] == config["validation"]["rmse_pct"] > 0
    assert record["val_rmse_pct_float"] > 0 and "bsoc quantize" in config["command"]
    assert config["weight_bytes"] == summary["weight_bytes"]

    code, _, err = run_cli(["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "q2")], capsys)
    assert code == 2 and "already an int8 model" in err and "Traceback" not in err
