"""`bsoc export --format onnx`: both graphs, run by onnxruntime, against the Python estimator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edge_models import ALL_KINDS, cycle_samples, estimator_of_kind, run_cli
from stream_set import StreamSet
from test_ekf_synthetic import true_tables

from bsoc.ekf.estimator import EkfSocEstimator
from bsoc.ekf.filter import NoiseSettings
from bsoc.export.write import export_model
from bsoc.nn.estimator import LstmSocEstimator

onnx = pytest.importorskip("onnx", reason="onnx is in the export extra: pip install '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the export extra")



def _export(kind: str, tmp_path: Path) -> tuple[LstmSocEstimator, Path]:
    estimator = estimator_of_kind(kind)
    estimator.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "onnx", "onnx")
    return estimator, tmp_path / "onnx"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_onnx_graphs_compute_what_the_estimator_computes(
    kind: str, tmp_path: Path, toy_dataset: Path,
) -> None:
    estimator, folder = _export(kind, tmp_path)
    samples = cycle_samples(toy_dataset)
    expected = estimator.predict(samples)  # int8 models: bsoc's own int8 arithmetic
    streams = StreamSet(estimator)
    for row in samples:
        streams.step(row)

    step = ort.InferenceSession(str(folder / "bsoc_step.onnx"))
    state = np.zeros((1, len(estimator.initial_state())), np.float32)
    stepped = []
    for row in samples.astype(np.float32):
        soc, state = step.run(None, {"samples": row[None], "state": state})
        stepped.append(float(soc[0]))
    np.testing.assert_allclose(stepped, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(state[0], streams.states[0], atol=1e-5, rtol=0)

    sequence = ort.InferenceSession(str(folder / "bsoc_sequence.onnx"))
    soc, final = sequence.run(None, {"samples": samples[None].astype(np.float32),
                                     "state": np.zeros_like(state)})
    assert soc.shape == (1, len(samples))
    np.testing.assert_allclose(soc[0], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(final, state, atol=1e-6, rtol=0)


def test_streams_in_one_onnx_batch_are_independent(tmp_path: Path, toy_dataset: Path) -> None:
    estimator, folder = _export("projected-lstm", tmp_path)
    samples = cycle_samples(toy_dataset, 300)
    later = samples[100:]
    sequence = ort.InferenceSession(str(folder / "bsoc_sequence.onnx"))
    batch = np.stack([samples[:200], later[:200]]).astype(np.float32)
    soc, _ = sequence.run(None, {"samples": batch, "state": np.zeros((2, 48), np.float32)})
    np.testing.assert_allclose(soc[0], estimator.predict(samples[:200]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(soc[1], estimator.predict(later[:200]), atol=1e-5, rtol=0)


def _matmul_weights(path: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    graph = onnx.load(str(path)).graph
    return {t.name: (tuple(t.dims), t.data_type) for t in graph.initializer
            if t.name.startswith("lstm_1_recurrent")}


def test_projected_graph_keeps_thin_factors_and_int8_keeps_int8(tmp_path: Path) -> None:
    _export("projected-lstm", tmp_path / "float")
    _export("projected-lstm-int8", tmp_path / "int8")
    float_weights = _matmul_weights(tmp_path / "float" / "onnx" / "bsoc_step.onnx")
    # H = 16, rank 8: the projector (16, 8) then the weights (8, 64), never a dense (16, 64)
    assert sorted(shape for shape, _ in float_weights.values()) == [(8, 64), (16, 8)]
    int8_weights = _matmul_weights(tmp_path / "int8" / "onnx" / "bsoc_step.onnx")
    # the weights' scales folded into the projector's (8,): they have none of their own
    assert {shape: kind for shape, kind in int8_weights.values()} == {
        (16, 8): onnx.TensorProto.INT8, (8, 64): onnx.TensorProto.INT8,
        (8,): onnx.TensorProto.FLOAT}
    nodes = onnx.load(str(tmp_path / "int8" / "onnx" / "bsoc_step.onnx")).graph.node
    (weights,) = [name for name, (shape, _) in int8_weights.items() if shape == (8, 64)]
    (cast,) = [node.output[0] for node in nodes if node.op_type == "Cast"
               and node.input[0] == weights]
    assert [node.op_type for node in nodes if cast in node.input] == ["MatMul"]  # no Mul



def test_cli_export_records_the_interface_and_refuses_what_it_cannot_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    estimator_of_kind("svd-lstm-int8").save(tmp_path / "model")
    code, out, err = run_cli(["export", str(tmp_path / "model"), "--format", "onnx", "--out",
                           str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record == json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["files"] == ["bsoc_step.onnx", "bsoc_sequence.onnx"]
    assert (record["kind"], record["weights"], record["state_size"]) == ("svd-lstm-int8", "int8",
                                                                        48)
    assert record["state_layout"] == ["h_1", "c_1", "h_2", "c_2"]

    code, _, err = run_cli(["export", str(tmp_path / "model"), "--format", "onnx", "--out",
                         str(tmp_path / "out")], capsys)
    assert code == 2 and "--force" in err  # an existing export is not replaced silently
    code, _, err = run_cli(["export", str(tmp_path / "model"), "--format", "tflite", "--out",
                         str(tmp_path / "other")], capsys)
    assert code == 2 and "unknown export format 'tflite'" in err
    assert not (tmp_path / "other").exists()
    EkfSocEstimator(true_tables(), NoiseSettings(soc_std=1e-5, rc_std=1e-4, voltage_std=5e-3),
                    name="ekf").save(tmp_path / "ekf")
    code, _, err = run_cli(["export", str(tmp_path / "ekf"), "--format", "onnx", "--out",
                         str(tmp_path / "ekf-out")], capsys)
    assert code == 2 and "'ekf' model has no network to export" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ekf-out").exists()
