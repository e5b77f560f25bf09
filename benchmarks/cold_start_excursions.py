"""After a cold start: when a model is first back within the band, and why it leaves it again.

``bsoc evaluate`` measures a cold start's convergence as the time after which |error| stays
below 5 points *to the end of the cycle*. A model that is back within a minute but strays
to 5.2 points for half a minute two hours later scores two hours. This script tells the two
apart, per cycle: the time of the first sample inside the band (re-acquired), the
convergence time as ``bsoc evaluate`` measures it, and every excursion after the
re-acquisition (start, end, peak error, the true SOC there, and which share of it the
cell was at rest), so that a missed convergence goal can be read as slow re-acquisition or
as late excursions. The scenario and the band are ``bsoc evaluate``'s own.

    .venv/bin/python benchmarks/cold_start_excursions.py models/RUN/lstm models/RUN/ekf \\
        --data data/panasonic --out reports/RUN/cold-start-excursions.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.bench.machine import machine_info
from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.evaluate import (
    ScenarioSettings,
    measured_reacquisition_s,
    run_scenario,
    scenario_inputs,
)

# Samples outside the band closer than this are one excursion (a pulse train, not two).
MERGE_S = 30.0
# Below C/50 the cell counts as at rest: the voltage then relaxes rather than sags.
REST_C_RATE = 0.02


def excursions(time_s: np.ndarray, error_pct: np.ndarray, band_pct: float,
               merge_s: float = MERGE_S) -> tuple[float | None, list[tuple[int, int]]]:
    """The re-acquisition time (``bsoc evaluate``'s: None if never inside the band), and the
    excursions after it as (first, last) sample indices, gaps of up to ``merge_s`` merged."""
    reacquired = measured_reacquisition_s(time_s, error_pct, band_pct)
    if reacquired is None:
        return None, []
    inside = np.abs(error_pct) < band_pct
    first_inside = int(np.argmax(inside))
    outside = np.flatnonzero(~inside[first_inside:]) + first_inside
    if len(outside) == 0:
        return reacquired, []
    breaks = np.flatnonzero(np.diff(time_s[outside]) > merge_s)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(outside) - 1]])
    return reacquired, [(int(outside[s]), int(outside[e]))
                        for s, e in zip(starts, ends, strict=True)]


def cycle_rows(model_dir: Path, dataset: Dataset, split: str,
               settings: ScenarioSettings) -> list[dict[str, Any]]:
    """One row per cycle of ``split`` for the model in ``model_dir``."""
    cycles = dataset.split(split)
    inputs = scenario_inputs(cycles, "cold_start", settings)
    runs = run_scenario(load_estimator(model_dir), cycles, "cold_start", settings)
    rows = []
    for cycle, (samples, _), run in zip(cycles, inputs, runs, strict=True):
        error = run.error_pct
        reacquired, spans = excursions(run.time_s, error, settings.converged_below_pct)
        rest_a = REST_C_RATE * cycle.meta.nominal_capacity_ah
        episodes = []
        for first, last in spans:
            part = slice(first, last + 1)
            peak = first + int(np.argmax(np.abs(error[part])))
            episodes.append({
                "start_s": float(run.time_s[first]), "end_s": float(run.time_s[last]),
                "samples_outside": int(np.sum(np.abs(error[part])
                                              >= settings.converged_below_pct)),
                "peak_error_pct": float(error[peak]),
                "true_soc_pct": float(100 * run.soc_true[peak]),
                "rest_share": float(np.mean(np.abs(samples[part, 2]) < rest_a)),
            })
        rows.append({"cycle": run.cycle, "temperature_c": run.temperature_c,
                     "duration_s": float(run.time_s[-1]), "reacquisition_s": reacquired,
                     "convergence_s": run.convergence_s, "excursions": episodes})
    return rows


def median_or_none(values: list[float | None]) -> float | None:
    """The median, or None when any cycle never got there (a median would hide it)."""
    return None if any(v is None for v in values) else float(np.median(values))


def per_temperature(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over the cycles of each temperature, as the issue's goal is stated."""
    table = []
    for temperature in sorted({r["temperature_c"] for r in rows}):
        at = [r for r in rows if r["temperature_c"] == temperature]
        table.append({"temperature_c": temperature, "cycles": len(at),
                      "median_reacquisition_s": median_or_none([r["reacquisition_s"] for r in at]),
                      "median_convergence_s": median_or_none([r["convergence_s"] for r in at]),
                      "excursions": sum(len(r["excursions"]) for r in at)})
    return table


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f} s"


def print_model(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    for row in rows:
        peaks = [abs(e["peak_error_pct"]) for e in row["excursions"]]
        late = (f"; {len(peaks)} excursions after it, peak {max(peaks):.1f} points, the last "
                f"ending at {seconds(row['excursions'][-1]['end_s'])}, "
                f"{np.mean([e['rest_share'] for e in row['excursions']]):.0%} at rest"
                if peaks else "")
        print(f"  {row['cycle']:<16} re-acquired {seconds(row['reacquisition_s'])}, converged "
              f"{seconds(row['convergence_s'])} of {seconds(row['duration_s'])}{late}")
    for t in per_temperature(rows):
        print(f"  {t['temperature_c']:>5g} °C: median re-acquired "
              f"{seconds(t['median_reacquisition_s'])}, median converged "
              f"{seconds(t['median_convergence_s'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    dataset = Dataset.load(args.data)
    settings = ScenarioSettings()
    result: dict[str, Any] = {"data": str(args.data), "split": args.split,
                              "band_pct": settings.converged_below_pct, "merge_s": MERGE_S,
                              "rest_c_rate": REST_C_RATE, "scenario": settings.to_json(),
                              "machine": machine_info(), "models": {}}
    for model_dir in args.models:
        rows = cycle_rows(model_dir, dataset, args.split, settings)
        result["models"][str(model_dir)] = {"cycles": rows,
                                            "per_temperature": per_temperature(rows)}
        print_model(str(model_dir), rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
