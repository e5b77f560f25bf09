"""Does a fusion model drift with degraded sensors? Per test cycle, from the same model:

* the error the degraded sensors add: |error degraded - error from start|, largest over the
  whole cycle (the scenario's inputs are those of ``bsoc.evaluate``: +1 % of 1C current
  offset, 3x voltage noise, temperature lagging by 120 s);
* the largest |error| after the first 5 minutes, degraded and clean;
* the current offset the filter has estimated at the end (the injected one is +1 % of 1C).

    python benchmarks/fusion_drift.py models/fusion --data data/panasonic \\
        --out reports/fusion_drift.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.evaluate import ScenarioSettings, scenario_inputs
from bsoc.fusion import filter as kernel

SETTLED_S = 300.0


def main(
    model: Path = typer.Argument(..., help="A fusion model folder."),
    data: Path = typer.Option(..., "--data", help="Dataset; its test split is used."),
    out: Path = typer.Option(None, help="Write the results as JSON here."),
) -> None:
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
    result = {"model": str(model), "dataset": str(data), "cycles": rows,
              "worst_added_pct": max(r["added_by_degraded_sensors_max_pct"] for r in rows)}
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
