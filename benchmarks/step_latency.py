"""Per-sample streaming latency of the LSTM estimator, side by side in one process.

Compares, for one stream (batch 1), the cost of advancing by one sample with

* ``compiled step_batch``: the estimator's streaming path (pre-transposed float32 factors,
  normalisation folded in, one fused numba kernel call per step);
* ``torch Lstm.step``: the network's own layers stepped in ``torch.inference_mode``;
* ``torch nn.LSTM``: eager ``torch.nn.LSTM`` layers (same weights), one sample per call;
* ``batch forward``: ``predict`` on the whole sequence, divided by its length (what
  offline re-analysis costs per sample; a live stream cannot use it).

Methods are timed interleaved (each repeat runs all of them in turn) and the median and
p10-p90 of the repeats are printed, so the ratios hold on a busy machine.

    .venv/bin/python benchmarks/step_latency.py [--model models/lstm] [--steps 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from bsoc.estimator import load_estimator
from bsoc.nn.estimator import LstmSocEstimator
from bsoc.nn.network import SocNetwork


def _samples(steps: int, seed: int = 0) -> np.ndarray:
    """A drive-like sequence (time, V, I, T) at 1 Hz; latency does not depend on values."""
    rng = np.random.default_rng(seed)
    current = np.repeat(rng.choice([-6.0, -3.0, -1.0, 0.0, 1.5], steps // 10 + 1), 10)[:steps]
    voltage = 3.9 + 0.02 * current + rng.normal(0, 0.002, steps)
    temperature = 25.0 + np.cumsum(np.abs(current)) / steps
    return np.column_stack([np.arange(steps, dtype=float), voltage, current, temperature])


def compiled_stepper(estimator: LstmSocEstimator, samples: np.ndarray) -> Callable[[], None]:
    def run() -> None:
        state = estimator.initial_state()[None, :]
        for t in range(len(samples)):
            _, state = estimator.step_batch(samples[t : t + 1], state)

    return run


def torch_layer_stepper(network: SocNetwork, samples: np.ndarray) -> Callable[[], None]:
    features = torch.as_tensor(samples[:, 1:4], dtype=torch.float32)

    def run() -> None:
        with torch.inference_mode():
            states = [layer.zero_state(1, features) for layer in
                      (network.get_submodule(n) for n in network.lstm_names)]
            for t in range(len(features)):
                x = ((features[t] - network.input_mean) / network.input_std)[None, :]
                for k, name in enumerate(network.lstm_names):
                    x, states[k] = network.get_submodule(name).step(x, states[k])
                torch.sigmoid(network.fc(x))

    return run


def torch_lstm_stepper(network: SocNetwork, samples: np.ndarray) -> Callable[[], None]:
    """Eager nn.LSTM layers holding the same weights (second bias zero)."""
    layers = []
    for name in network.lstm_names:
        ours = network.get_submodule(name)
        lstm = torch.nn.LSTM(ours.input_size, ours.hidden_size, batch_first=True)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(ours.input_weights)
            lstm.weight_hh_l0.copy_(ours.recurrent_weights)
            lstm.bias_ih_l0.copy_(ours.bias)
            lstm.bias_hh_l0.zero_()
        layers.append(lstm.eval())
    features = torch.as_tensor(samples[:, 1:4], dtype=torch.float32)

    def run() -> None:
        with torch.inference_mode():
            states = [None] * len(layers)
            for t in range(len(features)):
                x = ((features[t] - network.input_mean) / network.input_std)[None, None, :]
                for k, lstm in enumerate(layers):
                    x, states[k] = lstm(x, states[k])
                torch.sigmoid(network.fc(x))

    return run


def batch_forward(estimator: LstmSocEstimator, samples: np.ndarray) -> Callable[[], None]:
    return lambda: estimator.predict(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: an untrained Table-1 network)")
    parser.add_argument("--steps", type=int, default=2000, help="samples per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (batch 1 gains "
                        "nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    estimator = load_estimator(args.model) if args.model else LstmSocEstimator(SocNetwork())
    if not isinstance(estimator, LstmSocEstimator):
        parser.error(f"{args.model} is not a neural model")
    network = estimator.network
    samples = _samples(args.steps)
    methods = {
        "compiled step_batch (streaming path)": compiled_stepper(estimator, samples),
        "torch Lstm.step (inference_mode)": torch_layer_stepper(network, samples),
        "torch nn.LSTM eager, one step": torch_lstm_stepper(network, samples),
        "batch forward (predict), per sample": batch_forward(estimator, samples),
    }
    for run in methods.values():  # warm-up: allocator, BLAS and kernel selection
        run()
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - start) / len(samples) * 1e6)
    reference = float(np.median(timings["compiled step_batch (streaming path)"]))
    print(f"{estimator.name}: {estimator.learnables():,} learnables, "
          f"{estimator.macs_per_sample():,} MACs/sample; {args.steps} steps x {args.repeats} "
          f"repeats, torch threads {args.threads}")
    print(f"{'method':40s} {'median us':>10s} {'p10-p90 us':>16s} {'vs compiled':>11s}")
    for name, values in timings.items():
        median = float(np.median(values))
        spread = f"{np.percentile(values, 10):.1f}-{np.percentile(values, 90):.1f}"
        print(f"{name:40s} {median:10.1f} {spread:>16s} {median / reference:10.2f}x")


if __name__ == "__main__":
    main()
