"""Peer runtimes: every neural model also stepped by eager PyTorch and by ONNX Runtime.

The peers run in the same interleaved speed measurements as bsoc's own path (a slow
moment of the shared machine hits all alike), one stepper per model and peer named
``"<model> (<peer label>)"``. :func:`peer_record` turns a peer's timings into its part of
the model's ``peers`` entry in benchmark.json: its latency and throughput, bsoc's speed-up
over it (above 1: bsoc is faster) and the fraction of the machine's GEMM limit it reaches.
"""

from __future__ import annotations

from typing import Any

from bsoc.bench.limit import achieved
from bsoc.bench.speed import Steppable
from bsoc.estimator import SocEstimator

LABELS = {"onnxruntime": "ONNX Runtime", "torch_eager": "eager torch"}


def stepper_name(model: str, peer: str) -> str:
    """The peer's stepper in the interleaved runs (and the key of its timings)."""
    return f"{model} ({LABELS[peer]})"


def peer_steppers(models: dict[str, SocEstimator]
                  ) -> tuple[dict[str, dict[str, Steppable]], dict[str, Any]]:
    """``{model: {peer: stepper}}`` for every neural model, and each peer's settings for
    benchmark.json (for ONNX Runtime absent: why it was not measured)."""
    import torch

    from bsoc.bench import ort
    from bsoc.bench.eager import EagerTorchStepper
    from bsoc.nn.estimator import LstmSocEstimator

    reason = ort.missing()
    settings = {"torch_eager": {"torch": torch.__version__, "threads": torch.get_num_threads()},
                "onnxruntime": ({"not_measured": reason} if reason else ort.session_settings())}
    steppers: dict[str, dict[str, Steppable]] = {}
    for name, model in models.items():
        if isinstance(model, LstmSocEstimator):
            steppers[name] = {"torch_eager": EagerTorchStepper(model)}
            if reason is None:
                steppers[name]["onnxruntime"] = ort.OrtStepper(model)
    return steppers, settings


def peer_record(entry: dict[str, Any], latency: dict[str, float],
                throughput: dict[int, dict[str, float]], limit_macs_per_s: float
                ) -> dict[str, Any]:
    """A peer's figures beside bsoc's ``entry`` (which already holds its speed): batch 1
    is the step latency, batched the same batch sizes but 1 as bsoc's throughput."""
    by_batch = {str(batch): spread for batch, spread in throughput.items()}
    largest = by_batch.get(str(entry["throughput_batch_size"]), {}).get("median")
    return {
        "step_latency_us": latency["median"],
        "step_latency_us_spread": latency,
        "throughput_by_batch": by_batch,
        "throughput_samples_per_s": largest,
        "bsoc_speedup": {
            "step": latency["median"] / entry["step_latency_us"],
            "by_batch": {batch: entry["throughput_by_batch"][batch]["median"] / spread["median"]
                         for batch, spread in by_batch.items()},
        },
        "achieved": achieved(entry["macs_per_sample"], latency["median"], largest,
                             limit_macs_per_s),
    }
