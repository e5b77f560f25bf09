"""int8 weight quantisation: the arithmetic, every LSTM kind, bytes, model folders, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from edge_models import KINDS, cycle_samples, float_estimator, per_output_network, run_cli
from safetensors import safe_open
from stream_set import StreamSet

from bsoc.compress.maps import ProjectedMap
from bsoc.compress.quantize import Int8Map, quantize_factor, quantize_network
from bsoc.errors import ModelFileError
from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.layers import DenseMap


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


def test_factor_quantisation_per_input_channel_is_per_output_of_the_transpose() -> None:
    torch.manual_seed(1)
    factor = torch.randn(5, 300) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 0.0])[:, None]
    values, scales = quantize_factor(factor, per_input=True)
    assert values.shape == (5, 300) and scales.shape == (5,)
    values_t, scales_t = quantize_factor(factor.T)
    assert torch.equal(values, values_t.T) and torch.equal(scales, scales_t)
    assert values[:4].abs().amax(dim=1).tolist() == [127] * 4 and scales[4] == 1.0


def test_a_chain_stores_its_last_factor_without_scales_folded_into_the_first() -> None:
    """x @ (Q_1 s_1) @ (s_2 Q_2) = x @ (Q_1 (s_1 s_2)) @ Q_2: Q_1, s_1 per output channel of
    F_1, Q_2, s_2 per input channel of F_2; a dense map keeps its per-output scales."""
    source = float_estimator("projected-lstm").network
    quantized = quantize_network(source)
    for address, layer_map in quantized.weight_maps().items():
        first, second = source.weight_maps()[address].factors()
        q1, s1 = quantize_factor(first)
        q2, s2 = quantize_factor(second, per_input=True)
        (v1, scales1), (v2, scales2) = layer_map.int8_factors()
        assert torch.equal(v1, q1) and torch.equal(scales1, s1 * s2)
        assert torch.equal(v2, q2) and scales2 is None
        assert layer_map.unscaled == (1,) and "scales_1" not in layer_map.state_dict()
        f1, f2 = layer_map.factors()
        assert torch.equal(f1, q1.float() * (s1 * s2)) and torch.equal(f2, q2.float())
        # the same map as each factor dequantised on its own, to float32 rounding
        unfolded = (q1.float() * s1) @ (s2[:, None] * q2.float())
        torch.testing.assert_close(f1 @ f2, unfolded, rtol=1e-5, atol=1e-6)
    dense = quantize_network(float_estimator("lstm").network)
    for layer_map in dense.weight_maps().values():
        ((values, scales),) = layer_map.int8_factors()
        assert scales is not None and scales.shape == (values.shape[1],)


def test_int8_bytes_count_one_scale_per_rank_in_a_chain() -> None:
    """projected-lstm (16, 8): ranks 1, 8 (layer 1), 8, 4 (layer 2) and 4 (FC)."""
    source = float_estimator("projected-lstm")
    quantized = quantize_network(source.network)
    int8 = (3 + 64) + (16 * 8 + 8 * 64) + (16 * 8 + 8 * 32) + (8 * 4 + 4 * 32) + (8 * 4 + 4)
    scales = 4 * (1 + 8 + 8 + 4 + 4)  # F_1's only, one per rank component
    biases = 4 * (64 + 32 + 1)
    assert quantized.weight_bytes() == int8 + scales + biases == 1775
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
            expected = values.float() if scales is None else values.float() * scales
            assert torch.equal(dequantised, expected)
    assert quantized.learnables() == source.learnables()
    assert quantized.macs_per_sample() == source.macs_per_sample()
    # bytes: one per int8 weight, four per bias and per scale: one per output column of a
    # single factor or of every factor of a chain but its last, which has none
    int8 = scales = 0
    for layer_map in float_maps.values():
        factors = layer_map.factors()
        int8 += sum(f.numel() for f in factors)
        scales += 4 * sum(f.shape[1] for f in (factors if len(factors) == 1 else factors[:-1]))
    biases = sum(layer.bias.numel() for layer in source.network.learnable_layers().values())
    assert quantized.weight_bytes() == int8 + scales + 4 * biases
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
    assert "lstm_1.recurrent_map.scales_1" not in dtypes  # folded into scales_0
    assert sum(d == torch.int8 for d in dtypes.values()) == 2 * 4 + 2  # 2 factors, 5 maps
    assert sum(".scales_" in key for key in dtypes) == 5  # one factor's scales a map
    loaded = load_estimator(tmp_path / "q")
    assert loaded.kind == "projected-lstm-int8"
    assert loaded.weight_bytes() == quantized.weight_bytes()
    samples = cycle_samples(toy_dataset, 300)
    np.testing.assert_array_equal(loaded.predict(samples), quantized.predict(samples))


def _dequantised_float(source: LstmSocEstimator, quantized: LstmSocEstimator
                       ) -> LstmSocEstimator:
    """The float network with ``quantized``'s dequantised factors as its weights."""
    network = copy.deepcopy(source.network)
    for address, layer_map in quantized.network.weight_maps().items():
        factors = [f.detach().numpy() for f in layer_map.factors()]
        if len(factors) == 2:
            network.set_map(address, ProjectedMap.from_arrays(factors[0], factors[1].T))
        else:
            dense = DenseMap(layer_map.in_features, layer_map.out_features)
            dense.weights.data.copy_(torch.from_numpy(factors[0].T))
            network.set_map(address, dense)
    return LstmSocEstimator(network.eval(), kind=source.kind)


@pytest.mark.parametrize("kind", ["projected-lstm", "lstm"])
def test_an_int8_folder_with_scales_on_every_factor_loads_and_predicts_as_before(
    kind: str, tmp_path: Path, toy_dataset: Path,
) -> None:
    """Folders bsoc wrote before it folded a chain's last scales: each factor ``q * s`` with
    its own per-output scales, and no ``unscaled_factors`` in the config."""
    source = float_estimator(kind)
    LstmSocEstimator(per_output_network(source.network), kind=f"{kind}-int8").save(tmp_path / "q")
    config_path = tmp_path / "q" / "config.json"
    config = json.loads(config_path.read_text())
    for spec in config["architecture"]["maps"].values():
        assert spec.pop("unscaled_factors") == []
    config_path.write_text(json.dumps(config))
    loaded = load_estimator(tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as tensors:
        stored = {key: tensors.get_tensor(key) for key in tensors.keys()}  # noqa: SIM118
    for address, layer_map in loaded.network.weight_maps().items():
        for k, (values, scales) in enumerate(layer_map.int8_factors()):
            assert torch.equal(scales, stored[f"{address}.scales_{k}"])
            assert torch.equal(layer_map.factors()[k], values.float() * scales)
    samples = cycle_samples(toy_dataset, 300)
    np.testing.assert_allclose(loaded.predict(samples),
                               _dequantised_float(source, loaded).predict(samples),
                               atol=1e-6, rtol=0)


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
