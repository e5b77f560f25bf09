"""The benchmark's peer runtimes compute what bsoc computes, and the GEMM limit's record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_models import cycle_samples, estimator_of_kind

from bsoc.bench.limit import achieved, gemm_limit

pytest.importorskip("onnxruntime", reason="onnxruntime is in the export extra")


@pytest.mark.parametrize("kind", ["lstm", "projected-lstm-int8"])
def test_onnx_runtime_peer_steps_as_bsoc_does(kind: str, toy_dataset: Path) -> None:
    from bsoc.bench.ort import INTRA_OP_THREADS, OrtStepper

    estimator = estimator_of_kind(kind)
    peer = OrtStepper(estimator)
    assert peer.session.get_session_options().intra_op_num_threads == INTRA_OP_THREADS
    samples = cycle_samples(toy_dataset, 120)
    streams = np.stack([samples[:60], samples[60:]], axis=1)  # two streams, 60 steps
    ours = np.zeros((2, len(estimator.initial_state())))
    peer_states = ours.copy()
    for rows in streams:
        soc, ours = estimator.step_batch(rows, ours)
        peer_soc, peer_states = peer.step_batch(rows, peer_states)
        np.testing.assert_allclose(peer_soc, soc, atol=1e-5, rtol=0)
    np.testing.assert_allclose(peer_states, ours, atol=1e-5, rtol=0)


def test_gemm_limit_is_the_best_repeat_of_the_faster_library() -> None:
    limit = gemm_limit((64, 32, 48), repeats=2)
    best = {name: record["best_macs_per_s"] for name, record in limit["by_library"].items()}
    assert set(best) == {"numpy", "torch"}
    assert limit["macs_per_s"] == max(best.values()) == best[limit["library"]]
    assert all(record["median_macs_per_s"] <= record["best_macs_per_s"]
               for record in limit["by_library"].values())
    assert limit["shape_mkn"] == [64, 32, 48] and limit["dtype"] == "float32"


def test_achieved_macs_are_macs_per_sample_times_speed() -> None:
    record = achieved(1000, step_latency_us=2.0, samples_per_s=4e6, limit_macs_per_s=1e10)
    assert record == pytest.approx({"macs_per_s_batch_1": 5e8, "macs_per_s_batched": 4e9,
                                    "fraction_of_gemm_limit_batch_1": 0.05,
                                    "fraction_of_gemm_limit_batched": 0.4})
    assert set(achieved(1000, 2.0, None, 1e10)) == {"macs_per_s_batch_1",
                                                    "fraction_of_gemm_limit_batch_1"}
