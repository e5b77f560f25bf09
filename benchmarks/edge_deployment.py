"""Edge deployment figures of exported C libraries: instructions, flash, RAM, a Cortex-M4 run.

For each model folder, the deployment record that ``bsoc benchmark`` writes
(:mod:`bsoc.export.deployment`: the model exported as C, its host build checked against
Python, x86 instructions per ``bsoc_step`` by callgrind over the first
``--count-samples`` of the first test cycle, Cortex-M4F flash and RAM and Cortex-M4
instructions per step counted on QEMU over the same samples), plus the
Cortex-M4 build run on QEMU's MPS2 AN386 board over the first ``--qemu-samples`` of the
same cycle, its SOCs compared with the Python estimator's (max |difference|), and the
model's RMSE on the whole test split (from start). Instruction ratios are the first
``lstm`` model's count over each model's (the first model's if none is an ``lstm``).

Prints a Markdown table and writes ``deployment.json`` into ``--out``.

    .venv/bin/python benchmarks/edge_deployment.py --data data/panasonic \\
        --models models/lstm models/projected models/projected-int8 --out /tmp/edge
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bsoc.data.dataset import Dataset
from bsoc.estimator import load_estimator
from bsoc.evaluate import evaluate
from bsoc.export import measure
from bsoc.export.deployment import deployment_record


def _ratio(reference: dict[str, Any], row: dict[str, Any], key: str) -> str:
    if key not in reference or key not in row:
        return "-"
    return f"{reference[key] / row[key]:.1f}x"


def table(rows: list[dict[str, Any]]) -> str:
    reference = next((r for r in rows if r["kind"] == "lstm"), rows[0])
    lines = [("| model | kind | weights [B] | MACs/step | x86 instr./step | x86 ratio | "
              "M4 instr./step | M4 ratio | M4 flash [B] | M4 RAM [B] | "
              "QEMU max abs diff (samples) | RMSE test [%] |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m4 = r.get("cortex_m4", {})
        qemu = r.get("qemu")
        x86, cm4 = "x86_instructions_per_step", "cortex_m4_instructions_per_step"
        cells = [r["model"], r["kind"], f"{r['weight_bytes']:,}", f"{r['macs_per_step']:,}",
                 f"{r[x86]:,}" if x86 in r else "-", _ratio(reference, r, x86),
                 f"{r[cm4]:,}" if cm4 in r else "-", _ratio(reference, r, cm4),
                 f"{m4['flash']:,}" if m4 else "-", f"{m4['ram']:,}" if m4 else "-",
                 f"{qemu['max_abs_diff']:.1e} ({qemu['samples']})" if qemu else "-",
                 f"{r['rmse_pct']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with a test split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count-samples", type=int, default=100)
    parser.add_argument("--qemu-samples", type=int, default=2000)
    args = parser.parse_args()
    for what in ("callgrind", "cortex-m4", "qemu"):
        missing = measure.missing_tools(what)
        if missing:
            print(f"skipping {what}: {', '.join(missing)} not installed (make edge-tools)")
    test = Dataset.load(args.data).split("test")
    cycle = test[0]
    samples = cycle.samples()
    rows = []
    for model in args.models:
        estimator = load_estimator(model)
        record = deployment_record(model, estimator, samples, args.out / model.name,
                                   count_samples=args.count_samples,
                                   qemu_samples=args.qemu_samples)
        rmse = evaluate(estimator, test, scenarios=("from_start",))["rmse_pct"]
        rows.append({"model": model.name, "kind": estimator.kind, "rmse_pct": rmse, **record})
    meta = {"data": str(args.data), "cycle": cycle.meta.name, "test_cycles": len(test),
            "rows": rows}
    (args.out / "deployment.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"test cycle {cycle.meta.name} ({len(samples)} samples)\n{table(rows)}")


if __name__ == "__main__":
    main()
