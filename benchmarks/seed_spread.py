"""Mean and spread over seeds of pipeline runs: one Markdown table from their benchmark.json.

A single training run's accuracy moves by a few tenths of a point with the seed, so the
README's figures for a profile come from several runs of the same command with
``--seed 0, 1, 2`` and are read as mean ± sample standard deviation:

    python benchmarks/seed_spread.py reports/pan-e60-s0/benchmark/benchmark.json \\
        reports/pan-e60-s1/benchmark/benchmark.json reports/pan-e60-s2/benchmark/benchmark.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

# cold starts whose error is still beyond the band at the cycle's last sample (not converged)
OUTSIDE_AT_END = "outside 5 points at the end"
COLUMNS = ("RMSE from start", "RMSE cold start", "RMSE degraded sensors", "MAE 25 °C",
           "cold start: median convergence", OUTSIDE_AT_END)


def model_figures(model: dict[str, Any]) -> dict[str, Any]:
    """One model's figures from a benchmark entry; per temperature as {°C: RMSE}."""
    cold = model["scenarios"]["cold_start"]
    mae_25 = [row["mae_pct"] for row in model["by_temperature"] if row["temperature_c"] == 25.0]
    return {
        "RMSE from start": model["rmse_pct"],
        "RMSE cold start": cold["rmse_pct"],
        "RMSE degraded sensors": model["scenarios"]["degraded_sensors"]["rmse_pct"],
        "MAE 25 °C": mae_25[0] if mae_25 else None,
        "cold start: median convergence": cold["convergence_s_median"],
        OUTSIDE_AT_END: len(cold["not_converged_cycles"]),
        "by_temperature": {row["temperature_c"]: row["rmse_pct"] for row in model["by_temperature"]},
        "cycles": len(model["by_condition"]),
    }


def spread(values: list[float | None], digits: int = 2) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}"
    return f"{np.mean(present):.{digits}f} ± {np.std(present, ddof=1):.{digits}f}"


def tables(benchmarks: list[dict[str, Any]]) -> str:
    """The scenario table and the per-temperature table, one row per model."""
    names = list(dict.fromkeys(m["name"] for b in benchmarks for m in b["models"]))
    runs = {name: [model_figures(m) for b in benchmarks for m in b["models"] if m["name"] == name]
            for name in names}
    temperatures = sorted({t for rows in runs.values() for r in rows for t in r["by_temperature"]})
    units = {"cold start: median convergence": " s", OUTSIDE_AT_END: ""}
    lines = ["| model | seeds | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, rows in runs.items():
        cells = []
        for column in COLUMNS:
            digits = {"cold start: median convergence": 0, OUTSIDE_AT_END: 1}.get(column, 2)
            cell = spread([r[column] for r in rows], digits) + units.get(column, " %")
            if column == OUTSIDE_AT_END:
                cell += f" of {rows[0]['cycles']}"
            cells.append(cell)
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(f"{t:g} °C" for t in temperatures) + " |",
              "|---" * (len(temperatures) + 1) + "|"]
    for name, rows in runs.items():
        lines.append(f"| {name} | " + " | ".join(
            spread([r["by_temperature"].get(t) for r in rows]) + " %" for t in temperatures) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("benchmarks", type=Path, nargs="+", help="benchmark.json of each run")
    args = parser.parse_args()
    print(tables([json.loads(path.read_text()) for path in args.benchmarks]))


if __name__ == "__main__":
    main()
