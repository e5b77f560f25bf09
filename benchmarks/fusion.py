"""The fusion estimator's measurements beyond ``bsoc benchmark`` (README, "Fusion estimator").

* ``step-cost``: the streaming step of fusion models against the step of the LSTM they wrap,
  side by side. The issue's budget: the fusion step over the compressed LSTM must cost less
  than 1.5x the compressed LSTM's own step. Every model is stepped one sample at a time
  through ``step_batch`` (the service's interface), interleaved in rounds so that a busy
  machine slows all alike; time is the thread's CPU time, which preemption by other
  processes does not inflate.
* ``drift``: does a fusion model drift with degraded sensors? Per test cycle: the error the
  degraded sensors add (|error degraded - error from start|, largest over the whole cycle;
  the scenario's inputs are those of ``bsoc.evaluate``: +1 % of 1C current offset, 3x
  voltage noise, temperature lagging by 120 s), the largest |error| after the first
  5 minutes, degraded and clean, and the current offset the filter has estimated at the end.
* ``figures``: SOC with its +-2 sigma band for chosen models of a benchmark (the README's
  trace figure).

    python benchmarks/fusion.py step-cost --models models/projected-ft --models models/fusion \\
        --data data/panasonic --out reports/fusion_step.json
    python benchmarks/fusion.py drift models/fusion --data data/panasonic \\
        --out reports/fusion_drift.json
    python benchmarks/fusion.py figures reports/pan-fusion/benchmark \\
        --models lstm,ekf,fusion-ekf-lstm --out docs/figures/fusion-traces.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bsoc.bench.machine import machine_info
from bsoc.data.dataset import Dataset
from bsoc.estimator import SocEstimator, load_estimator
from bsoc.evaluate import ScenarioSettings, scenario_inputs
from bsoc.fusion import filter as kernel
from bsoc.report import figures as report_figures
from bsoc.report.render import load_benchmark, pick_cycles

SETTLED_S = 300.0

app = typer.Typer(add_completion=False, no_args_is_help=True)


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON and, with ``out``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def step_cpu_us(model: SocEstimator, samples: np.ndarray) -> float:
    """Mean thread CPU time of one streaming step over ``samples``, in microseconds."""
    states = model.initial_state()[None, :]
    started = time.thread_time()
    for k in range(len(samples)):
        _, states = model.step_batch(samples[k : k + 1], states)
    return 1e6 * (time.thread_time() - started) / len(samples)


@app.command("step-cost")
def step_cost(
    models: list[Path] = typer.Option(..., "--models", help="Model folders; the first is the "
                                      "reference the ratios are against."),
    data: Path = typer.Option(..., "--data", help="Dataset whose first test cycle is stepped."),
    steps: int = typer.Option(2000, help="Samples per round."),
    rounds: int = typer.Option(15, help="Interleaved rounds (the median is reported)."),
    out: Path = typer.Option(None, help="Write the results as JSON here."),
) -> None:
    """Streaming step cost of each model, and its ratio to the first one's."""
    samples = Dataset.load(data).split("test")[0].samples()[:steps]
    loaded = {str(path): load_estimator(path) for path in models}
    for model in loaded.values():  # compile and warm up
        step_cpu_us(model, samples[:50])
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(rounds):
        for name, model in loaded.items():
            times[name].append(step_cpu_us(model, samples))
    reference = str(models[0])
    emit({
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
    }, out)


@app.command("drift")
def drift(
    model: Path = typer.Argument(..., help="A fusion model folder."),
    data: Path = typer.Option(..., "--data", help="Dataset; its test split is used."),
    out: Path = typer.Option(None, help="Write the results as JSON here."),
) -> None:
    """What degraded sensors add to a fusion model's error, per test cycle."""
    fused = load_estimator(model)
    if fused.kind != "fusion":
        raise typer.BadParameter(f"{model} holds a {fused.kind!r} model, not a fusion model")
    cycles = Dataset.load(data).split("test")
    settings = ScenarioSettings()
    clean = scenario_inputs(cycles, "from_start", settings)
    degraded = scenario_inputs(cycles, "degraded_sensors", settings)
    rows = []
    for cycle, (samples, truth), (noisy, _) in zip(cycles, clean, degraded, strict=True):
        errors, offset = [], 0.0
        for inputs in (samples, noisy):
            lstm_soc = fused.lstm.predict(inputs)
            soc, std = np.empty(len(inputs)), np.empty(len(inputs))
            final = kernel.filter_sequence(fused.buffer, inputs, lstm_soc,
                                           np.ones(len(inputs), bool),
                                           fused.initial_state()[fused.lstm_size:], soc, std)
            errors.append(100 * (soc - truth))
            offset = float(final[kernel.OFFSET])
        settled = samples[:, 0] - samples[0, 0] >= SETTLED_S
        rows.append({
            "cycle": cycle.meta.name, "temperature_c": cycle.meta.ambient_c,
            "added_by_degraded_sensors_max_pct": float(np.abs(errors[1] - errors[0]).max()),
            "degraded_max_abs_err_after_5_min_pct": float(np.abs(errors[1][settled]).max()),
            "clean_max_abs_err_after_5_min_pct": float(np.abs(errors[0][settled]).max()),
            "degraded_end_err_pct": float(errors[1][-1]),
            "offset_estimate_a": offset,
            "offset_injected_a": settings.current_offset_c_rate * cycle.meta.nominal_capacity_ah,
        })
    emit({"model": str(model), "dataset": str(data), "cycles": rows,
          "worst_added_pct": max(r["added_by_degraded_sensors_max_pct"] for r in rows)}, out)


@app.command("figures")
def figures(
    benchmark: Path = typer.Argument(..., help="Benchmark folder (benchmark.json, traces.npz)."),
    models: str = typer.Option(..., help="Comma-separated model names, in plotting order."),
    out: Path = typer.Option(..., help="PNG to write."),
) -> None:
    """SOC traces with +-2 sigma bands of chosen models, a test cycle per temperature."""
    bench, traces, _ = load_benchmark(benchmark)
    wanted = models.split(",")
    missing = set(wanted) - {m["name"] for m in bench["models"]}
    if missing:
        raise typer.BadParameter(f"{benchmark} has no model {', '.join(sorted(missing))}")
    chosen = sorted((m for m in bench["models"] if m["name"] in wanted),
                    key=lambda m: wanted.index(m["name"]))
    figure = report_figures.soc_traces(chosen, traces, list(pick_cycles(bench)))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    app()
