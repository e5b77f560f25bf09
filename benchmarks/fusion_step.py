"""Streaming step of a fusion model against the step of the LSTM it wraps, side by side.

The issue's budget: the fusion step over the compressed LSTM must cost less than 1.5x the
compressed LSTM's own step. Both are stepped one sample at a time through ``step_batch``
(the service's interface), interleaved in rounds so that a busy machine slows both alike;
time is the thread's CPU time, which preemption by other processes does not inflate.

    python benchmarks/fusion_step.py --models models/projected-ft --models models/fusion \\
        --data data/panasonic --out reports/fusion_step.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from bsoc.bench.machine import machine_info
from bsoc.data.dataset import Dataset
from bsoc.estimator import SocEstimator, load_estimator


def step_cpu_us(model: SocEstimator, samples: np.ndarray) -> float:
    """Mean thread CPU time of one streaming step over ``samples``, in microseconds."""
    states = model.initial_state()[None, :]
    started = time.thread_time()
    for k in range(len(samples)):
        _, states = model.step_batch(samples[k : k + 1], states)
    return 1e6 * (time.thread_time() - started) / len(samples)


def main(
    models: list[Path] = typer.Option(..., "--models", help="Model folders; the first is the "
                                      "reference the ratios are against."),
    data: Path = typer.Option(..., "--data", help="Dataset whose first test cycle is stepped."),
    steps: int = typer.Option(2000, help="Samples per round."),
    rounds: int = typer.Option(15, help="Interleaved rounds (the median is reported)."),
    out: Path = typer.Option(None, help="Write the results as JSON here."),
) -> None:
    samples = Dataset.load(data).split("test")[0].samples()[:steps]
    loaded = {str(path): load_estimator(path) for path in models}
    for model in loaded.values():  # compile and warm up
        step_cpu_us(model, samples[:50])
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(rounds):
        for name, model in loaded.items():
            times[name].append(step_cpu_us(model, samples))
    reference = str(models[0])
    result = {
        "machine": machine_info(),
        "steps_per_round": len(samples),
        "rounds": rounds,
        "models": {name: {"kind": loaded[name].kind,
                          "median_us": float(np.median(t)),
                          "p10_us": float(np.percentile(t, 10)),
                          "p90_us": float(np.percentile(t, 90)),
                          "ratio_to_reference": float(np.median(t) / np.median(times[reference]))}
                   for name, t in times.items()},
        "reference": reference,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
